"""Atomic file and directory writes.

Indexes, checkpoints and results are written next to their destination and moved into place
with ``os.replace``, so a crash leaves either the old content or the new one, never half of each.

What the rename lands on is checked first: a symlink is followed (its target is replaced, the link
stays), a FIFO or a character device (``/dev/null``, ``/dev/stdout``) is written into as a stream,
and anything else that is not a regular file (a block device, a socket, a folder where a file is
expected) is refused with :class:`OutputPathError` instead of being replaced. New files and folders
get the usual permissions under the process umask (``0666``/``0777`` minus the umask), not the
private ``0600``/``0700`` of temporary files, so what one account writes another can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .data.beir import DataError


class OutputPathError(DataError):
    """An output path that cannot be written the way it was asked (a device, a socket, a folder...).

    A :class:`~searchr3.data.beir.DataError` (so a ``ValueError``): bad input the command line reports as
    one ``error:`` line with exit code 2.
    """


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to find it out is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISFIFO, "FIFO"),
    ):
        if test(mode):
            return name
    return "special file"


def _resolve(path: str | os.PathLike) -> tuple[Path, os.stat_result | None]:
    """``path`` with symlinks followed, and its stat (None when nothing is there yet)."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        return path, os.stat(path)
    except FileNotFoundError:
        return path, None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    A symlink's target is replaced (the link stays); a FIFO or character device is written into;
    a folder, block device or socket raises :class:`OutputPathError`. A replaced file keeps its mode.
    """
    path, st = _resolve(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
            with open(path, "wb") as fh:  # a stream: nothing to replace atomically
                fh.write(data)
            return
        raise OutputPathError(f"{path} is a {_kind(st.st_mode)}, not a regular file: refusing to replace it")
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~current_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is moved aside first and deleted only after the new folder is in
    place, so an interruption at any point leaves a complete folder (old or new) on disk,
    plus at worst a stray ``.tmp``/``.old`` folder. A symlink to a folder is followed (the
    folder it points at is replaced); an existing non-folder raises :class:`OutputPathError`.
    """
    path, st = _resolve(path)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputPathError(
            f"{path} is a {_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'file'}, not a folder: refusing to replace it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o777 & ~current_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
