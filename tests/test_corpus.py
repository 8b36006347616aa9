"""Tests for babygpt_pl.corpus on small packages built in tmp_path; no network."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from babygpt_pl import corpus, files
from babygpt_pl.errors import UserError

# File name -> poems; numbers 0, 2000, 10000 sort differently as text, so the expected text proves numeric order.
POEMS = {
    "dist/songci/ci.song.10000.json": [{"rhythmic": "浣溪沙", "author": "晏殊", "paragraphs": ["一曲新词酒一杯。"]}],
    "dist/songci/ci.song.0.json": [
        {"rhythmic": "导引", "author": "和岘", "paragraphs": ["气和玉烛，睿化著鸿明。", "缇管一阳生。"]},
        {"rhythmic": "六州", "author": "和岘", "paragraphs": []},
    ],
    "dist/songci/ci.song.2000.json": [
        {"rhythmic": "念奴娇", "author": "苏轼", "paragraphs": ["大江东去。"], "tags": ["豪放"]}
    ],
    "dist/songci/ci.song.2019y.json": [{"rhythmic": "补遗", "author": "无名氏", "paragraphs": ["一句。"]}],
    "dist/wudaishici/nantang/poetrys.json": [
        {"rhythmic": "虞美人", "author": "李煜", "title": "虞美人", "paragraphs": ["春花秋月何时了。"]}
    ],
    # Files in the package that are not part of the corpus.
    "dist/songci/author.song.json": [{"name": "和岘", "description": "不是词"}],
    "dist/songci/宋词三百首.json": [{"rhythmic": "重复", "author": "某", "paragraphs": ["不应出现。"]}],
    "dist/wudaishici/nantang/authors.json": [{"name": "李煜"}],
}
EXPECTED = (
    "导引 和岘\n气和玉烛，睿化著鸿明。\n缇管一阳生。\n\n"
    "六州 和岘\n\n"
    "念奴娇 苏轼\n大江东去。\n\n"
    "浣溪沙 晏殊\n一曲新词酒一杯。\n\n"
    "补遗 无名氏\n一句。\n\n"
    "虞美人 李煜\n春花秋月何时了。\n"
)


def make_package(parent: Path) -> Path:
    """Write the fixture package as an extracted npm tarball: parent/package/dist/..."""
    root = parent / "package"
    for rel, poems in POEMS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    return root


def make_tarball(tmp_path: Path) -> Path:
    root = make_package(tmp_path / "src")
    tarball = tmp_path / "chinese-poetry-2.0.1.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname="package")
    return tarball


def fake_npm(monkeypatch: pytest.MonkeyPatch, tarball: Path, returncode: int = 0) -> None:
    """Make npm look installed and have `npm pack` copy ``tarball`` into --pack-destination."""

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        destination = Path(command[command.index("--pack-destination") + 1])
        (destination / tarball.name).write_bytes(tarball.read_bytes())
        stdout = json.dumps([{"filename": tarball.name}])
        return subprocess.CompletedProcess(command, returncode, stdout, "npm error 404 Not Found")

    monkeypatch.setattr(corpus.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(corpus.subprocess, "run", run)


def test_directory_source_gives_exact_text_in_numeric_file_order(tmp_path: Path) -> None:
    make_package(tmp_path / "pkg")
    out = corpus.build_ci(tmp_path / "pkg", tmp_path / "out" / "ci.txt")
    assert out == tmp_path / "out" / "ci.txt"
    assert out.read_bytes() == EXPECTED.encode("utf-8")


def test_package_dir_itself_is_accepted(tmp_path: Path) -> None:
    root = make_package(tmp_path)
    assert corpus.build_ci(root, tmp_path / "ci.txt").read_text(encoding="utf-8") == EXPECTED


def test_tarball_source_equals_directory_source(tmp_path: Path) -> None:
    from_dir = corpus.build_ci(make_package(tmp_path / "dir"), tmp_path / "a" / "ci.txt")
    from_tgz = corpus.build_ci(make_tarball(tmp_path), tmp_path / "b" / "ci.txt")
    assert from_tgz.read_bytes() == from_dir.read_bytes()


@pytest.mark.parametrize("top", ["dist", "."])
def test_a_tarball_of_the_package_folder_itself_is_read(tmp_path: Path, top: str) -> None:
    """`tar czf mine.tgz -C package dist` (or `.`): no top folder to strip, as a directory source may have none."""
    root = make_package(tmp_path / "src")
    tarball = tmp_path / "mine.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root / top, arcname=top)
    assert corpus.build_ci(tarball, tmp_path / "ci.txt").read_text(encoding="utf-8") == EXPECTED


@pytest.mark.parametrize("mode", ["gz", "xz"])
def test_a_corrupt_compressed_tarball_is_one_line(tmp_path: Path, mode: str) -> None:
    """zlib's and lzma's own errors, not a TarError: they ended in a traceback."""
    root = make_package(tmp_path / "src")
    (root / "dist" / "filler.bin").write_bytes(random.Random(0).randbytes(1 << 20).hex().encode())  # not read
    tarball = tmp_path / f"p.t{mode[0]}z"
    with tarfile.open(tarball, f"w:{mode}") as tar:
        tar.add(root, arcname="package")
    data = bytearray(tarball.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(b ^ 0x55 for b in data[middle : middle + 2000])
    tarball.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"cannot read tarball {tarball}: .*; pass the .tgz made by `npm pack"):
        corpus.build_ci(tarball, tmp_path / "ci.txt")
    assert not (tmp_path / "ci.txt").exists()


def test_an_unreadable_source_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file without read permission (faked: root, as tests may run, reads any file) ended in a traceback."""
    package = make_package(tmp_path)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError, match=r"cannot read .*\.json \(Permission denied\): make the chinese-poetry"):
        corpus.build_ci(package, tmp_path / "ci.txt")


def test_user_source_with_other_sha_warns_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = corpus.build_ci(make_package(tmp_path), tmp_path / "ci.txt")
    assert out.is_file()
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: ") and "differs from the published corpus" in line


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_package(tmp_path / "pkg")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "ci.txt").write_text("old", encoding="utf-8")

    class Killed(BaseException):
        """Stands in for a signal arriving between writing the temp file and renaming it."""

    def killed(src: object, dst: object) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(files.os, "replace", killed)
        with pytest.raises(Killed):
            corpus.build_ci(source, out_dir / "ci.txt")
    assert [p.name for p in out_dir.iterdir()] == ["ci.txt"]
    assert (out_dir / "ci.txt").read_text(encoding="utf-8") == "old"

    corpus.build_ci(source, out_dir / "ci.txt")
    assert [p.name for p in out_dir.iterdir()] == ["ci.txt"]
    assert (out_dir / "ci.txt").read_text(encoding="utf-8") == EXPECTED


def test_ensure_corpus_returns_existing_file_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    existing = tmp_path / "ci.txt"
    existing.write_text("mine", encoding="utf-8")
    monkeypatch.setattr(corpus, "build_ci", pytest.fail)
    assert corpus.ensure_corpus(existing) == existing
    assert existing.read_text(encoding="utf-8") == "mine"


def test_ensure_corpus_builds_missing_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = corpus.ensure_corpus(tmp_path / "data" / "ci.txt", source=make_package(tmp_path))
    assert out.read_text(encoding="utf-8") == EXPECTED
    assert "building" in capsys.readouterr().err


def test_ensure_corpus_missing_other_path_raises(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--data.path"):
        corpus.ensure_corpus(tmp_path / "poems.txt")


def test_missing_required_file_raises(tmp_path: Path) -> None:
    root = make_package(tmp_path)
    (root / "dist/wudaishici/nantang/poetrys.json").unlink()
    with pytest.raises(UserError, match="nantang/poetrys.json"):
        corpus.build_ci(root, tmp_path / "ci.txt")
    assert not (tmp_path / "ci.txt").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (5, "ci.song.0.json holds 5, not a list of poems"),
        ([7], "a poem lacks rhythmic, author or paragraphs: 7"),
        ([{"rhythmic": "导引", "author": None, "paragraphs": []}], "a poem lacks rhythmic, author or paragraphs"),
        ([{"rhythmic": "导引", "author": "和岘", "paragraphs": "气和"}], "a poem lacks rhythmic, author or paragraphs"),
        ([{"rhythmic": "导引", "author": "和岘", "paragraphs": [1]}], "a poem's paragraphs are not all text: [1]"),
    ],
)
def test_a_malformed_poem_file_is_refused(tmp_path: Path, content: object, expected: str) -> None:
    """Not a TypeError, and not a corpus with "None" for an author or a poem one character per line."""
    root = make_package(tmp_path)
    (root / "dist/songci/ci.song.0.json").write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(expected)):
        corpus.build_ci(root, tmp_path / "ci.txt")
    assert not (tmp_path / "ci.txt").exists()


@pytest.mark.parametrize("out", ["folder", "file/ci.txt"])
def test_an_unwritable_out_is_refused_before_the_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(corpus, "_npm_pack", lambda destination: pytest.fail("fetched before checking --out"))
    with pytest.raises(SystemExit) as info:
        corpus.main(["--out", str(tmp_path / out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / out}") and err.count("\n") == 1
    with pytest.raises(UserError, match="--data.path"):
        corpus.ensure_corpus(tmp_path / "file" / "ci.txt")


def test_a_source_that_is_not_a_tarball_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("not a tarball")
    with pytest.raises(UserError, match="not a tar archive") as info:
        corpus.build_ci(tmp_path / "notes.txt", tmp_path / "ci.txt")
    assert "\n" not in str(info.value)
    assert not capsys.readouterr().err  # no "not the published tarball" warning before the error


def test_a_url_source_or_a_folder_out_is_refused(tmp_path: Path) -> None:
    url = "https://registry.npmjs.org/chinese-poetry/-/chinese-poetry-2.0.1.tgz"
    with pytest.raises(UserError, match=f"source {url} is a URL, and only local files are read"):
        corpus.build_ci(url, tmp_path / "ci.txt")
    with pytest.raises(UserError, match=r"--out .*/dir/ names a folder: give a file name, e.g. .*/dir/ci.txt"):
        corpus.build_ci(make_package(tmp_path), f"{tmp_path}/dir/")
    assert not (tmp_path / "dir").exists()


def test_a_folder_among_the_source_files_is_skipped(tmp_path: Path) -> None:
    package = make_package(tmp_path)
    (package / "dist" / "songci" / "ci.song.99000.json").mkdir()
    corpus.build_ci(package, tmp_path / "ci.txt")
    assert (tmp_path / "ci.txt").read_text(encoding="utf-8") == EXPECTED


@pytest.mark.parametrize(
    ("signum", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_main_on_a_signal_says_so_not_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    python_sigint,
    signum,
    code,
    said,
) -> None:
    """SIGTERM ended it without a word, leaving npm running and its half-fetched tarball behind."""

    def signalled(*args: object) -> None:
        signal.getsignal(signum)(signum, None)  # what the process does as the signal arrives

    monkeypatch.setattr(corpus, "build_ci", signalled)
    with pytest.raises(SystemExit) as info:
        corpus.main(["--out", str(tmp_path / "ci.txt")])
    assert info.value.code == code
    assert capsys.readouterr().err == f"{said}\n"


def test_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        corpus.build_ci(tmp_path / "nope.tgz", tmp_path / "ci.txt")


def test_npm_missing_raises_with_how_to_get_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as info:
        corpus.build_ci(None, tmp_path / "ci.txt")
    message = str(info.value)
    assert "\n" not in message
    for hint in (
        "npm",
        "Node.js",
        "npm pack chinese-poetry@2.0.1",
        "python -m babygpt_pl.corpus --source",
        "--data.path",
    ):
        assert hint in message


def test_npm_failure_raises_with_its_last_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_npm(monkeypatch, make_tarball(tmp_path), returncode=1)
    with pytest.raises(UserError, match="404 Not Found.*--source"):
        corpus.build_ci(None, tmp_path / "ci.txt")


def test_npm_integrity_mismatch_raises_naming_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = make_tarball(tmp_path)
    fake_npm(monkeypatch, tarball)
    with pytest.raises(UserError) as info:
        corpus.build_ci(None, tmp_path / "out" / "ci.txt")
    assert corpus.PACKAGE_INTEGRITY in str(info.value)
    assert corpus._integrity(tarball) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_npm_fetch_builds_and_removes_its_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = make_tarball(tmp_path)
    fake_npm(monkeypatch, tarball)
    monkeypatch.setattr(corpus, "PACKAGE_INTEGRITY", corpus._integrity(tarball))
    monkeypatch.setattr(corpus, "CI_SHA256", hashlib.sha256(EXPECTED.encode("utf-8")).hexdigest())
    monkeypatch.setattr(corpus.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert corpus.build_ci(None, tmp_path / "ci.txt").read_text(encoding="utf-8") == EXPECTED
    assert list((tmp_path / "tmp").iterdir()) == []


def test_official_package_with_wrong_corpus_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = make_tarball(tmp_path)
    monkeypatch.setattr(corpus, "PACKAGE_INTEGRITY", corpus._integrity(tarball))
    with pytest.raises(UserError, match="please report"):
        corpus.build_ci(tarball, tmp_path / "ci.txt")
    assert not (tmp_path / "ci.txt").exists()


def test_main_prints_path_sha_and_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ci.txt"
    corpus.main(["--source", str(make_package(tmp_path)), "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        str(out),
        f"sha256: {hashlib.sha256(out.read_bytes()).hexdigest()}",
        f"characters: {len(EXPECTED)}",
    ]


def test_main_reports_user_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        corpus.main(["--source", str(tmp_path / "nope"), "--out", str(tmp_path / "ci.txt")])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: source ")


@pytest.mark.skipif(not os.environ.get("BABYGPT_CORPUS_TGZ"), reason="set BABYGPT_CORPUS_TGZ to the real tarball")
def test_real_tarball_reproduces_published_corpus(tmp_path: Path) -> None:
    out = corpus.build_ci(os.environ["BABYGPT_CORPUS_TGZ"], tmp_path / "ci.txt")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == corpus.CI_SHA256
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "ci.txt"
    if shared.is_file():
        assert out.read_bytes() == shared.read_bytes()


def test_the_output_must_be_a_file_to_write_not_a_pipe_nor_the_source(tmp_path: Path) -> None:
    source = make_tarball(tmp_path)
    with pytest.raises(
        UserError, match="--out /dev/null is a pipe, a device or this command's own output: give the path"
    ):
        corpus.build_ci(source, "/dev/null")  # (the summary read back from a pipe blocked)
    before = source.read_bytes()
    with pytest.raises(UserError, match=f"--out {source} is the source itself, which it would replace"):
        corpus.build_ci(source, source)
    assert source.read_bytes() == before


def test_the_output_must_not_be_among_the_package_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It would replace one of the package's files (the next build then finds it no JSON), or add one; beside them,
    as data/ci.txt in a folder where the tarball was unpacked, it is built."""
    package = make_package(tmp_path)
    inside = package / "dist" / "songci" / "ci.song.0.json"
    before = inside.read_bytes()
    with pytest.raises(UserError, match=f"--out {inside} is inside {package / 'dist'}, the package files it is"):
        corpus.build_ci(tmp_path, inside)
    assert inside.read_bytes() == before
    monkeypatch.chdir(tmp_path)
    assert corpus.build_ci(".", "data/ci.txt").read_text(encoding="utf-8") == EXPECTED


def test_a_source_that_is_a_pipe_is_said_to_be_one(tmp_path: Path) -> None:
    fifo = tmp_path / "s.tgz"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=f"source {fifo} is a pipe or a device, not a file: save it to a file"):
        corpus.build_ci(fifo, tmp_path / "ci.txt")


def test_a_url_data_path_is_refused_not_made_into_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="data.path https://example.com/data/ci.txt is a URL, and only local files"):
        corpus.ensure_corpus("https://example.com/data/ci.txt", make_tarball(tmp_path))
    assert not (tmp_path / "https:").exists()
