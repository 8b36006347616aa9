"""Atomic writes: whole files or none, through symlinks, in place for pipes and devices; early path checks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from babygpt_pl.errors import UserError
from babygpt_pl.files import atomic_writer, check_folder_writable, check_writable, write_atomic


def test_check_writable_accepts_new_files_in_new_folders(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "deeper" / "out.jsonl", "--generation.output")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_check_writable_says_a_name_is_too_long_in_one_line(tmp_path: Path) -> None:
    """Path.is_dir() raised ENAMETOOLONG: a traceback where every other bad path is one line."""
    with pytest.raises(UserError, match=r"^--generation.output .*a{200}.*: File name too long; choose another path"):
        check_writable(tmp_path / ("a" * 300 + ".jsonl"), "--generation.output")
    with pytest.raises(UserError, match=r"^--checkpoint.dirpath .*b{200}: File name too long; choose another folder"):
        check_folder_writable(tmp_path / ("b" * 300), "--checkpoint.dirpath")


def test_check_writable_rejects_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--generation.output .* is a directory: give a file name"):
        check_writable(tmp_path, "--generation.output")


def test_check_writable_rejects_a_file_as_folder(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match=r"f.txt is a file, not a folder"):
        check_writable(tmp_path / "f.txt" / "out.jsonl", "--generation.output")


def test_check_folder_writable_accepts_a_new_folder_and_creates_nothing(tmp_path: Path) -> None:
    check_folder_writable(tmp_path / "new" / "deeper", "--checkpoint.dirpath")
    check_folder_writable(tmp_path, "--checkpoint.dirpath")
    assert list(tmp_path.iterdir()) == []


def test_check_folder_writable_rejects_a_file_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match=r"--checkpoint.dirpath .*f.txt/ck: .*f.txt is a file, not a folder"):
        check_folder_writable(tmp_path / "f.txt" / "ck", "--checkpoint.dirpath")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc and /sys")
def test_check_folder_writable_tries_rather_than_trusting_permission_bits() -> None:
    # No file can be made in /proc, even by root, for whom os.access says yes.
    with pytest.raises(UserError, match=r"--checkpoint.dirpath /proc/ck: cannot write in /proc \("):
        check_folder_writable("/proc/ck", "--checkpoint.dirpath")
    with pytest.raises(UserError, match=r"--generation.output /sys/x.jsonl: cannot write in /sys \("):
        check_writable("/sys/x.jsonl", "--generation.output")


def test_new_files_get_the_umask_permissions_not_mkstemp_private_ones(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", b"a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    (tmp_path / "b.txt").write_bytes(b"old")
    (tmp_path / "b.txt").chmod(0o600)
    write_atomic(tmp_path / "b.txt", b"new")  # a replaced file keeps its permissions
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    assert (tmp_path / "b.txt").read_bytes() == b"new"


def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "target.jsonl").write_bytes(b"old")
    (tmp_path / "link.jsonl").symlink_to("target.jsonl")
    write_atomic(tmp_path / "link.jsonl", b"new")
    assert (tmp_path / "link.jsonl").is_symlink()
    assert (tmp_path / "target.jsonl").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "target.jsonl"]


def test_a_pipe_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that opening it for writing does not block
    try:
        write_atomic(fifo, b"through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_device_is_one_error_naming_the_option() -> None:
    with pytest.raises(UserError, match=r"could not write --generation.output /dev/full: No space left on device"):
        write_atomic("/dev/full", b"x" * 100_000, option="--generation.output")
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)  # still the device, not a file put in its place


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_dev_stdout_redirected_to_a_file_is_appended_to_not_replaced(tmp_path: Path, stream: str) -> None:
    out = tmp_path / "out.txt"
    code = (
        f"import sys; from babygpt_pl.files import write_atomic as w; print('text', file=sys.{stream}, flush=True); "
        f"w('/dev/{stream}', b'jsonl\\n')"
    )
    with out.open("w") as f:
        subprocess.run([sys.executable, "-c", code], check=True, **{stream: f})
    assert out.read_text() == "text\njsonl\n"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_a_regular_file_under_dev_is_replaced_like_any_other() -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        path = Path(folder) / "x.jsonl"
        write_atomic(path, b"run 1\n")
        write_atomic(path, b"run 2\n")
        assert path.read_bytes() == b"run 2\n"


def test_a_link_is_checked_where_it_points(tmp_path: Path) -> None:
    """atomic_writer writes a link's target: a link into a folder that cannot be made fails now, not after the work."""
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    link = tmp_path / "out.jsonl"
    link.symlink_to(tmp_path / "a_file" / "out.jsonl")  # dangling: its folder is a file
    with pytest.raises(UserError, match=f"--generation.output {link}: {tmp_path / 'a_file'} is a file, not a folder"):
        check_writable(link, "--generation.output")


def test_the_file_stdout_goes_to_is_written_where_stdout_is(tmp_path: Path) -> None:
    """`{ babygpt predict … --generation.output /dev/stdout; echo done; } > out.txt`: written through a file of its
    own, the JSON lines were where the shell's next write to stdout then landed."""
    out = tmp_path / "out.txt"
    saved = os.dup(1)
    with open(out, "wb") as f:
        os.dup2(f.fileno(), 1)
    try:
        os.write(1, b"before\n")
        with atomic_writer(out) as f:  # the same file, by another name than /dev/stdout's
            f.write(b'{"text": "json"}\n')
        os.write(1, b"after\n")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert out.read_bytes() == b'before\n{"text": "json"}\nafter\n'
