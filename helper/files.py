"""Opening a file that must be a regular file: a FIFO, device, socket or directory named like a
data file is refused before anything reads from it, so nothing blocks. The check is made on the
path and again on the open descriptor (the file may be swapped in between); the file is opened
non-blocking, which changes nothing for a regular file."""
from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["NotRegularFile", "file_kind", "open_regular"]

_KINDS = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket"))


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``regular file``, ``directory``, ``FIFO``, ..."""
    return next((kind for test, kind in _KINDS if test(mode)), "special file")


class NotRegularFile(ValueError):
    """``path`` is not a regular file but a ``kind`` (:func:`file_kind`)."""

    def __init__(self, path: str, kind: str) -> None:
        self.path, self.kind = path, kind
        super().__init__(f"{path} is not a regular file (a {kind})")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading in binary, when it is a regular file (or a symlink to one);
    :class:`NotRegularFile` otherwise, ``OSError`` when it cannot be opened."""
    kind = file_kind(os.stat(path).st_mode)
    if kind != "regular file":
        raise NotRegularFile(os.fspath(path), kind)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOCTTY", 0))
    kind = file_kind(os.fstat(fd).st_mode)
    if kind != "regular file":
        os.close(fd)
        raise NotRegularFile(os.fspath(path), kind)
    return os.fdopen(fd, "rb")
