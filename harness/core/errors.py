"""The harness's error types, and the one layer that turns any error a user's input or
machine can cause into the single line the command line prints (`granalign: error: ...`).

Each message names the file (and line or id), the URL or the path that failed, and what was
expected. Three rules hold for every line, whoever raised the error: a URL's password is
masked (`redact`), a value quoted in full never floods the terminal (`shorten`), and a
database error says what happened (a full disk, a read-only file, a server that does not
answer) instead of calling a sound file damaged (`store_failure`).
"""

from __future__ import annotations

import errno
import re
import sqlite3
from collections.abc import Iterator


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


class StoreError(HarnessError):
    """A database that cannot be used as it is: damaged, not SQLite, unreadable, full,
    read-only, or a server that does not answer; the message names it."""


# -- the three rules of every line ----------------------------------------------------------
MAX_LINE = 500  # characters of an error line: the start and the end of a longer one are kept
MAX_QUOTE = 200  # characters of a value quoted in a message

_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@\s]*@")
_QUERY_PASSWORD = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL password masked (`scheme://user:***@host`, `?password=***`):
    the one redaction, applied to every line the command line prints and every tag that
    holds a command line."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def shorten(text: str, limit: int = MAX_QUOTE) -> str:
    """`text` cut to about `limit` characters, keeping its start and its end (where a long
    value usually differs from the expected one) and saying how much was left out."""
    text = redact(text)  # before the cut: a password cut in two would no longer look like one
    if len(text) <= limit:
        return text
    head, tail = (limit * 2) // 3, limit // 3
    return f"{text[:head]}... [{len(text) - head - tail} characters left out] ...{text[-tail:]}"


def quote(value: object, limit: int = MAX_QUOTE) -> str:
    """`repr(value)` for a message, shortened; a huge value is never turned into text whole
    (a 10 MB name, a nested structure)."""
    if isinstance(value, str | bytes) and len(value) > 4 * limit:
        value = value[: 2 * limit] + value[-limit:]  # the repr of the kept ends only
    try:
        text = repr(value)
    except RecursionError:
        return "<a value nested too deeply to show>"
    return shorten(text, limit)


# -- what a database or store error means ----------------------------------------------------
def causes(e: BaseException) -> Iterator[BaseException]:
    """`e` and the exceptions it was raised from or during, outermost first."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__ or getattr(e, "orig", None)  # type: ignore[assignment]


_UNREACHABLE = ("ConnectionError", "ConnectionRefusedError", "ConnectTimeout", "ConnectTimeoutError",
                "NewConnectionError", "MaxRetryError", "ReadTimeout", "Timeout", "TimeoutError",
                "NameResolutionError", "gaierror")
_UNREACHABLE_TEXT = re.compile(r"connection refused|could not connect|timeout expired|timed out|"
                               r"name or service not known|temporary failure in name resolution|"
                               r"max retries exceeded|failed to resolve|no route to host|network is unreachable|"
                               r"connection reset|server closed the connection", re.IGNORECASE)
DISK_FULL = "the disk is full: free space and run again (what was finished is kept)"


def store_failure(e: BaseException) -> str | None:
    """What a database error means for the user, or None when it is none of the known
    conditions: a full disk, a read-only file or file system, an I/O error, a lock held too
    long, a missing driver, a server that does not answer. Looks through the whole chain
    (Optuna and MLflow wrap SQLAlchemy, which wraps the driver)."""
    for c in causes(e):
        if isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT):
            return DISK_FULL
        if isinstance(c, OSError) and c.errno == errno.EROFS:
            return "a read-only file system"
        if type(c).__name__ == "NoSuchModuleError":  # SQLAlchemy: an unknown `scheme+driver`
            return f"SQLAlchemy knows no such database driver ({c})"
        if isinstance(c, ModuleNotFoundError):
            return (f"the database driver {c.name!r} is not installed (pip install "
                    f"{_DRIVERS.get(c.name or '', c.name)})")
    for c in causes(e):
        text = str(c).lower()
        if "database or disk is full" in text or "no space left" in text or "disk full" in text:
            return DISK_FULL
        if "readonly database" in text or "read-only" in text:
            return "the database is read-only (file permissions, or a read-only file system)"
        if "disk i/o error" in text:
            return "a disk I/O error (a full, removed or failing disk?)"
        if isinstance(c, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return "the database stayed locked by another process for too long; run again"
        if type(c).__name__ in _UNREACHABLE or _UNREACHABLE_TEXT.search(text):
            return "the server does not answer (" + shorten(str(c).splitlines()[0] if str(c) else type(c).__name__, 160) + ")"
    return None


def unreachable(e: BaseException) -> bool:
    """Whether `e` says a server did not answer (what a retry may cure)."""
    return (store_failure(e) or "").startswith("the server does not answer")


_DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
            "MySQLdb": "mysqlclient", "pyodbc": "pyodbc"}


def user_message(e: BaseException) -> str | None:
    """The one line `granalign: error: ...` for an exception a user's input or machine can
    cause (bad files, full or read-only disks, damaged databases, unreachable servers);
    None for a bug, which keeps its traceback. Errors that know their file say so themselves
    (HarnessError); an OSError names its path and the system's reason. Every line is
    shortened here, whoever built it, and so redacted (`shorten`)."""
    text = _message(e)
    if text is None:
        return None
    lines = [x for x in text.splitlines() if x.strip()] or [text]
    first, rest = lines[0], lines[1:]
    out = shorten(first, MAX_LINE) + "".join("\n" + shorten(x, MAX_LINE) for x in rest[:40])
    if len(rest) > 40:
        out += f"\n  ... ({len(rest) - 40} more lines)"
    return out


def _message(e: BaseException) -> str | None:
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
    if isinstance(e, RecursionError):
        return "input nested too deeply to read (a JSON or YAML value nested thousands of levels)"
    known = store_failure(e)
    if known is not None:
        return f"a database cannot be used: {known}"
    for c in causes(e):
        if isinstance(c, sqlite3.DatabaseError):
            if "not a database" in str(c) or "malformed" in str(c):
                return f"an SQLite database is damaged or not a database ({c})"
            return f"an SQLite database cannot be used ({c})"
    if type(e).__module__.startswith("sqlalchemy") and type(e).__name__ in ("DatabaseError", "OperationalError"):
        return f"a database cannot be used ({str(e).splitlines()[0][:300]})"
    return None
