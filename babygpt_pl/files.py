"""Atomic file writes, shared by the corpus builder, the prediction writer and checkpoint saving."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from babygpt_pl.errors import UserError

# Read once, at import: reading it means setting it, process-wide, and a file made meanwhile would get its mode.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def in_place(path: str | Path) -> bool:
    """Whether ``path`` is written in place rather than replaced: a pipe or device, or the file this process's
    stdout or stderr goes to (``/dev/stdout`` redirected to a file, under any name)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) or _standard_descriptor(st) is not None


def _standard_descriptor(st: os.stat_result) -> int | None:
    """1 or 2 where stdout or stderr writes to the file of ``st``, else None."""
    for fd in (1, 2):
        try:
            if os.path.samestat(st, os.fstat(fd)):
                return fd
        except OSError:
            continue  # that descriptor is closed
    return None


def same_file(a: str | None, b: str | None) -> bool:
    """Whether two paths name one regular file. Regular files only: in a terminal /dev/stdin and /dev/stdout are
    one device, and rightly so."""
    return bool(a and b) and os.path.isfile(a) and os.path.isfile(b) and os.path.samefile(a, b)


def check_writable(path: str | Path, option: str, example: str = "samples.jsonl") -> None:
    """Fail now, in one line naming ``option``, if a file could not be written at ``path`` (before the work
    whose result it would hold, not after); ``example`` is a file name to suggest for a folder."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{option} {path} is a directory: give a file name, e.g. {path / example}")
        if in_place(path):
            if not os.access(path, os.W_OK):
                raise UserError(f"{option} {path}: no permission to write to it; choose another path")
            return
        # atomic_writer writes a symlink's target (and creates the missing folders): check the target's folder.
        check_folder_writable(Path(os.path.realpath(path)).parent, option, shown=path)
    except OSError as err:  # e.g. a name too long for the file system, which is_dir() does not swallow
        raise UserError(f"{option} {path}: {err.strerror or err}; choose another path") from None


def check_folder_writable(folder: str | Path, option: str, shown: str | Path | None = None) -> None:
    """Fail now, in one line naming ``option`` and ``shown`` (default: the folder), if files could not be written
    in ``folder`` (made if missing): before the work whose results would go there, not at its first save.

    It makes a temporary file in the folder, or in the nearest one that exists, since permission bits do not
    tell (root passes ``os.access`` in /proc and /sys, and a read-only mount refuses the owner); it creates nothing.
    """
    folder = Path(folder)
    shown = folder if shown is None else shown
    existing = folder
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as err:  # e.g. a name too long for the file system, which exists() does not swallow
        raise UserError(f"{option} {shown}: {err.strerror or err}; choose another folder") from None
    if not existing.is_dir():
        raise UserError(f"{option} {shown}: {existing} is a file, not a folder; choose another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        problem = f"cannot write in {existing} ({err.strerror})"
        raise UserError(f"{option} {shown}: {problem}; choose another folder") from None


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once it is completely written and synced to disk.

    The temp file lives in the target's directory, so the final ``os.replace`` is a rename on one file
    system: a kill at any moment leaves either the old file or the whole new one, never half of either.
    A symlink is written through (its target is replaced). What :func:`in_place` names (a pipe, a device,
    the file stdout goes to) is appended to instead: it cannot, or must not, be replaced.
    """
    if in_place(path):
        fd = _standard_descriptor(os.stat(path)) if os.path.isfile(path) else None
        if fd is None:
            with open(path, "ab") as f:
                yield f
            return
        # Through stdout's (or stderr's) own descriptor, after what Python holds for it: a file opened anew has
        # an offset of its own, and what the shell writes to stdout after this command would land on this text.
        sys.stdout.flush()
        sys.stderr.flush()
        with os.fdopen(os.dup(fd), "wb") as f:
            yield f
        return
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or a new file's (rw for all, less the umask): mkstemp's are 0600."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    return 0o666 & ~_UMASK


def jsonl(records: list[dict]) -> bytes:
    """JSON lines, UTF-8, characters unescaped (ci stay readable)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def write_atomic(path: str | Path, data: bytes, option: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically; with ``option``, a failure is one error line naming it."""
    try:
        with atomic_writer(path) as f:
            f.write(data)
    except OSError as err:
        if option is None:
            raise
        raise write_error(option, path, err) from None


def write_error(option: str, path: str | Path, err: OSError) -> UserError:
    """The one error line of a failed write of ``option``'s file."""
    return UserError(f"could not write {option} {path}: {err.strerror or err}; choose another path")
