"""Private files: what capture and mock-from write is readable by its owner only, and no
symlink or hard link planted at an output's name is ever followed.

Outputs are written to a fresh temporary file in the destination folder (`mkstemp`: a random
name, `O_EXCL|O_NOFOLLOW`, mode 0600) and renamed onto the final name: a reader never sees a
half-written file, an existing output is replaced atomically, and a symlink at the final name
is replaced, not followed. A journal is appended to as flows complete, so it cannot be renamed
into place: it is created with `O_EXCL|O_NOFOLLOW` and 0600, and an existing one is appended to
only when it is a regular file of this user with no other link (see `open_append_private`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def private_output(path: str | os.PathLike[str], *, text: bool = True) -> Iterator[IO]:
    """A file to write `path`'s new content into; renamed onto `path` when the block succeeds.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(descriptor, PRIVATE_FILE)  # mkstemp's default; said here so that it stays so
        handle = os.fdopen(descriptor, "w", encoding="utf-8") if text else os.fdopen(descriptor, "wb")
    except BaseException:
        os.close(descriptor)
        os.unlink(temporary)
        raise
    try:
        with handle:
            yield handle
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_private(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write `data` to `path`, mode 0600, atomically, never through a symlink at `path`."""
    with private_output(path, text=isinstance(data, str)) as handle:
        handle.write(data)


class UnsafeFileError(OSError):
    """An existing file that is not this user's own plain file: never appended to."""


def open_append_private(path: str | os.PathLike[str]) -> IO[str]:
    """`path` opened for appending text: created 0600 (`O_EXCL|O_NOFOLLOW`) when it does not
    exist; when it does, appended to only if it is a regular file owned by this user with a
    single link (not a symlink, a FIFO, a device or a hard link to another file), and made 0600.
    """
    flags = os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _CLOEXEC
    try:
        descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        try:
            descriptor = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
        except OSError as exc:  # ELOOP for a symlink, ENXIO for a FIFO without a reader
            try:
                kind = os.lstat(path).st_mode
            except OSError:
                raise exc from None
            if stat.S_ISLNK(kind):
                raise UnsafeFileError(exc.errno, f"{path} is a symbolic link; remove it or choose another file") from None
            if not stat.S_ISREG(kind):
                raise UnsafeFileError(exc.errno, f"{path} is not a regular file; remove it or choose another file") from None
            raise
        try:
            info = os.fstat(descriptor)
            problem = _not_own_plain_file(info)
            if problem:
                raise UnsafeFileError(f"{path} {problem}; remove it or choose another file")
            if stat.S_IMODE(info.st_mode) != PRIVATE_FILE and hasattr(os, "fchmod"):
                os.fchmod(descriptor, PRIVATE_FILE)
            os.set_blocking(descriptor, True)
        except BaseException:
            os.close(descriptor)
            raise
    return os.fdopen(descriptor, "a", encoding="utf-8")


def _not_own_plain_file(info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return "belongs to another user"
    if info.st_nlink != 1:
        return "has other hard links"
    return None


def private_folder(prefix: str) -> Path:
    """A fresh folder in the temporary directory, mode 0700 (`mkdtemp`); the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=prefix))
