"""Failures of the state folder's filesystem, as errors that name the folder and the cause.

A full disk is a 507 (StorageFullError) saying how much space is free and what was needed;
a read-only, missing or failing folder is a 503 (StateError). Anything else is a bug and
stays what it was.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from fnpack.errors import StateError, StorageFullError

_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def free_space(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def state_error(exc: BaseException, folder: Path, needed: str | None = None) -> StateError | None:
    """The StateError for an OSError or SQLite error the state folder's filesystem caused, else None.

    `needed` says what the failed operation needed ("27.0 MiB for the archive ..."), for a full disk.
    """
    cause = exc if isinstance(exc, (OSError, sqlite3.Error)) else exc.__cause__  # e.g. OutputError from unpack
    if isinstance(cause, OSError):
        full, unwritable = cause.errno in _FULL, cause.errno in _UNWRITABLE
        detail = f"{cause.strerror or cause}" + (f" ({cause.filename})" if cause.filename else "")
    elif isinstance(cause, sqlite3.Error):
        name = getattr(cause, "sqlite_errorname", "") or ""
        full = name == "SQLITE_FULL"
        unwritable = name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR"))
        detail = f"{cause} (registry.db)"
    else:
        return exc if isinstance(exc, StateError) else None
    if full:
        free = free_space(folder)
        left = f"{mib(free)} free" if free is not None else "no space left"
        return StorageFullError(f"the state folder {folder} is out of space ({left}"
                                f"{'; ' + needed if needed else ''}): {detail}",
                                hint="free space on its filesystem, or serve from a bigger one (--state-dir), "
                                     "then try again")
    if unwritable:
        return StateError(f"the state folder {folder} cannot be written: {detail}",
                          hint="make it writable again (is its filesystem mounted read-only?); the platform "
                               "picks up where it was once it is")
    return exc if isinstance(exc, StateError) else None
