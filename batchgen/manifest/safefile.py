"""Open a file a user named (a manifest, a values or rows file, an image) without risk.

Such a path may name anything: a FIFO (a plain ``open()`` blocks forever waiting for a
writer), a device such as ``/dev/zero`` (reads without end), a folder, or a file of
many gigabytes. ``open_regular`` opens without blocking (``O_NONBLOCK``), checks with
``fstat`` on the open descriptor (no race with a rename) that it is a regular file,
and refuses it otherwise; ``read_regular`` also refuses a file over a size limit and
never reads more than that limit plus one byte, even when the file grows meanwhile.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from batchgen.errors import InputError


class FileRefused(InputError):
    """A named file that cannot be used: ``"{what} {path} {reason}"``; ``fix`` says what
    to do."""

    def __init__(
        self, what: str, path: Path, reason: str, fix: str, *, missing: bool = False
    ) -> None:
        super().__init__(f"{what} {path} {reason}")
        self.reason = reason
        self.fix = fix
        self.missing = missing  # there is no such file


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file, else ``FileRefused``.

    ``what`` names the file in messages ("manifest", "values file", "image").
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileRefused(
            what,
            path,
            "does not exist",
            "check the path (relative paths start at the manifest's folder)",
            missing=True,
        ) from None
    except IsADirectoryError:
        raise FileRefused(
            what, path, "is a folder, not a file", f"name a {what}, not a folder"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FileRefused(what, path, f"cannot be read: {reason}", "check the path") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileRefused(
                what,
                path,
                f"is {_kind(mode)}, not a file",
                f"name a regular {what}: pipes, devices and folders are not read",
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def too_big(path: Path, what: str, size: int, limit: int) -> FileRefused:
    return FileRefused(
        what,
        path,
        f"is {_size(size)}, over the limit of {_size(limit)}",
        f"make the {what} smaller (the limit is {_size(limit)})",
    )


def read_regular(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes``, else ``FileRefused``."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise too_big(path, what, size, max_bytes)
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise FileRefused(
                what, path, f"cannot be read: {exc.strerror or exc}", "check the file"
            ) from None
    if len(data) > max_bytes:  # it grew after the fstat
        raise too_big(path, what, len(data), max_bytes)
    return data


def _size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB".replace(".0 MiB", " MiB")
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB".replace(".0 KiB", " KiB")
    return f"{n} bytes"
