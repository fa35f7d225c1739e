"""The harness's error types. Each message names the file (and line or id) and what was
expected, so the command line can print it as it is (`granalign: error: ...`)."""

from __future__ import annotations

import errno
import sqlite3


class HarnessError(Exception):
    """Base of every error the command line reports as a one-line message, not a traceback."""


class DataError(HarnessError, ValueError):
    """Bad or missing input data; the message names the file, line or id."""


class DataFileMissing(DataError):
    """A benchmark file that the data root does not hold."""

    def __init__(self, path: object, dataset: str = "") -> None:
        self.path = str(path)
        self.dataset = dataset
        super().__init__(f"missing data file {path}")


class ConfigError(HarnessError, ValueError):
    """A config file, table spec, sweep space or override that does not fit its schema."""


def user_message(e: BaseException) -> str | None:
    """The one line `granalign: error: ...` for an exception a user's input or machine can
    cause (bad files, full or read-only disks, damaged databases); None for a bug, which
    keeps its traceback. Errors that know their file say so themselves (HarnessError); an
    OSError names its path and the system's reason."""
    if isinstance(e, HarnessError | ValueError | LookupError):
        return str(e).strip("'\"") if isinstance(e, KeyError) else str(e)
    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else ""
        reason = e.strerror or str(e)
        hint = {errno.ENOSPC: " (the disk is full: free space and run again; nothing half-written was kept)",
                errno.EROFS: " (a read-only file system)",
                errno.EACCES: " (this user may not write or read here)",
                errno.EDQUOT: " (over the disk quota)"}.get(e.errno or 0, "")
        return f"{where}: {reason}{hint}" if where else f"{reason}{hint}"
    if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
        return f"an SQLite database stayed locked by another process for too long ({e}); run again"
    if isinstance(e, sqlite3.DatabaseError):
        return f"an SQLite database is damaged or unreadable ({e})"
    if type(e).__module__.startswith("sqlalchemy") and type(e).__name__ in ("DatabaseError", "OperationalError"):
        return f"a database cannot be used ({str(e).splitlines()[0][:300]})"
    if isinstance(e, RecursionError):
        return "input nested too deeply to read (a JSON or YAML value nested thousands of levels)"
    return None
