"""The databases the harness writes (the cache's `cache.sqlite`, Optuna's and MLflow's
stores): their URLs checked before anything is created, SQLite files checked to be SQLite,
and the file lock that serialises schema creation between processes.

A store given by URL is checked here, at the edge, so that a typo (`sqllite:///x.db`, a
folder that does not exist) or a damaged file is one line naming it, before any other
store has been touched. Every call into a store goes through `store_call`: the one retry
policy for a server that does not answer (said on stderr, bounded in time), and a full
disk, a read-only file or an I/O error named with the store's file or URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from harness.core.errors import (
    DISK_FULL,
    ConfigError,
    HarnessError,
    StoreError,
    redact,
    shorten,
    store_failure,
    unreachable,
)

T = TypeVar("T")

CACHE_ENV = "GRANALIGN_CACHE"
DEFAULT_CACHE = Path(".granalign") / "cache"
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql")
MLFLOW_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def default_cache_dir() -> Path:
    """The cache folder when none is given: `$GRANALIGN_CACHE`, else `.granalign/cache`."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def url_scheme(url: str) -> str:
    """`postgresql+psycopg2://...` -> `postgresql`."""
    return url.split(":", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL; None for other RDBs and in-memory SQLite."""
    if not url.startswith("sqlite:///") or url in ("sqlite://", "sqlite:///:memory:"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0])


def check_sqlite_file(path: Path, what: str, must_exist: bool = False) -> None:
    """`path` is an SQLite database (or absent, unless `must_exist`) in an existing folder."""
    if not path.parent.is_dir():
        raise StoreError(f"{path}: the folder of the {what} does not exist ({path.parent}); "
                         "create it, or fix the path")
    if not path.exists() or (must_exist and path.stat().st_size == 0):
        if must_exist:
            raise StoreError(f"{path}: no {what} here")
        return
    if not os.access(path, os.R_OK) or path.is_dir():
        raise StoreError(f"{path}: cannot read the {what} ({'a folder' if path.is_dir() else 'permission denied'})")
    # Read through SQLite, never through a file descriptor of our own: closing any descriptor
    # of a database file drops every POSIX lock this process holds on it, and a process that
    # has lost the shared lock of its WAL connections lets another process's last close
    # checkpoint and delete the WAL under it (a study's database damaged). SQLite's own
    # closes wait while this process holds locks on the file. `immutable`: no lock and no
    # shared-memory file of its own (nothing created beside the database, even on a full disk).
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro&immutable=1", uri=True, timeout=60)
        try:
            con.execute("PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e) or "malformed" in str(e):
            raise StoreError(f"{path}: not an SQLite database (damaged, or another kind of file); "
                             f"expected the {what}") from None
        # anything else (a full disk, a lock, a read-only folder) is the store's to report
        # when it is opened, with what it means (`explain`)


def check_store_url(url: str, what: str, schemes: tuple[str, ...], must_exist: bool = False) -> str:
    """A store URL whose scheme is one of `schemes` (and, for SQLite, a usable file)."""
    scheme = url_scheme(url)
    if scheme not in schemes:
        raise ConfigError(f"{what} {redact(url)!r}: unknown scheme {scheme or '(none)'!r}; expected one of "
                          f"{', '.join(s + '://...' for s in schemes)}")
    db = sqlite_path(url)
    if db is not None:
        check_sqlite_file(db, what, must_exist)
    return url


_THREAD_LOCK = threading.RLock()
_HELD: dict[str, int] = {}  # lock key -> depth, while this process holds it


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive flock on `path` across processes, re-entrant within one process
    (threads of the process are serialised too). None: a lock within the process only."""
    with _THREAD_LOCK:
        key = str(path)
        if path is None or key in _HELD:
            _HELD[key] = _HELD.get(key, 0) + 1
            try:
                yield
            finally:
                _HELD[key] -= 1
                if not _HELD[key]:
                    del _HELD[key]
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # read-only is enough for flock: another user's lock file (0644) can be locked too
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def lock_beside(db: Path | None) -> Path | None:
    """The lock file of an SQLite database (`x.db` -> `x.db.lock`)."""
    return None if db is None else db.with_name(db.name + ".lock")


def thread_lock() -> threading.RLock:
    """The process-wide lock `file_lock` holds (for locks on other RDBs)."""
    return _THREAD_LOCK



# -- calls into a store: the one retry policy, errors that name the store -------------------------
RETRY_ENV = "GRANALIGN_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 60.0  # how long a remote store that does not answer is waited for, in all
FIRST_WAIT = 1.0  # seconds before the first retry; doubled after each, at most MAX_WAIT
MAX_WAIT = 15.0


def retry_seconds() -> float:
    """The time budget of retries (`$GRANALIGN_RETRY_SECONDS`, default 60 s; 0: no retry)."""
    text = os.environ.get(RETRY_ENV, "")
    try:
        value = float(text) if text else DEFAULT_RETRY_SECONDS
    except ValueError:
        raise ConfigError(f"${RETRY_ENV} = {text!r}: expected a number of seconds >= 0") from None
    if not value >= 0:
        raise ConfigError(f"${RETRY_ENV} = {text!r}: expected a number of seconds >= 0")
    return value


def explain(e: BaseException, url: str) -> str | None:
    """`store_failure(e)`, made exact for an SQLite store: SQLite reports a full disk under
    its WAL or shared-memory file as a 'disk I/O error'; a file system with no byte left is
    a full disk."""
    reason = store_failure(e)
    db = sqlite_path(url)
    if reason is not None and reason.startswith("a disk I/O error") and db is not None and disk_full(db):
        return DISK_FULL
    return reason


def disk_full(path: Path) -> bool:
    """Whether the file system of `path` (or of its folder) has no space left for a user."""
    for p in (path, path.parent):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize < 64 * 1024
    return False


def store_name(url: str) -> str:
    """How a message names a store: its SQLite file, else its URL without the password."""
    db = sqlite_path(url)
    return str(db) if db is not None else redact(url)


CONNECT_SECONDS = 10  # how long one connection to a database server may take


def connect_args(url: str) -> dict[str, int]:
    """The driver's connection time limit for a database server URL, where the driver takes
    one by that name (psycopg 3 and 2, PyMySQL, mysqlclient); an unroutable host then fails
    in seconds, not after the system's TCP timeout."""
    scheme, _, driver = url.split(":", 1)[0].lower().partition("+")
    if (scheme, driver) in {("postgresql", ""), ("postgresql", "psycopg"), ("postgresql", "psycopg2"),
                            ("mysql", ""), ("mysql", "pymysql"), ("mysql", "mysqldb")}:
        return {"connect_timeout": CONNECT_SECONDS}
    return {}


def probe_server(what: str, url: str) -> None:
    """Connect to a database server once, under `store_call`'s bounded and visible retry.
    MLflow's SQL store retries its first connection itself, silently, for about 100 s
    (`create_sqlalchemy_engine_with_retry`): probed first, it finds the server answering."""
    if sqlite_path(url) is not None or url_scheme(url) not in ("postgresql", "mysql", "mssql"):
        return
    import sqlalchemy  # lazy: heavy optional (SQLAlchemy), only for a database server

    def connect() -> None:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args(url), poolclass=sqlalchemy.pool.NullPool)
        try:
            engine.connect().close()
        finally:
            engine.dispose()

    store_call(what, url, connect)


def store_call(what: str, url: str, call: Callable[[], T]) -> T:
    """`call()` on the store `what` at `url`. A server that does not answer is retried with
    backoff, each retry said in one line on stderr, until `retry_seconds()` have passed;
    then, as for a full disk, a read-only database or an I/O error, one StoreError naming
    the store and what happened. Any other error is the caller's."""
    budget = retry_seconds()
    deadline = time.monotonic() + budget
    wait, attempt = FIRST_WAIT, 1
    while True:
        try:
            return call()
        except HarnessError:
            raise
        except Exception as e:
            reason = explain(e, url)
            if reason is None:
                raise
            left = deadline - time.monotonic()
            if not unreachable(e) or sqlite_path(url) is not None or left <= 0:
                tried = f" after {attempt} attempts in {budget:.0f} s" if attempt > 1 else ""
                raise StoreError(f"{store_name(url)}: the {what} cannot be used{tried}: {reason}") from None
            pause = min(wait, left)
            print(redact(f"granalign: the {what} at {url}: {shorten(reason, 160)}; "
                         f"retrying in {pause:.0f} s (attempt {attempt + 1}, giving up {left:.0f} s from now; "
                         f"${RETRY_ENV} sets how long)"), file=sys.stderr, flush=True)
            time.sleep(pause)
            wait, attempt = min(wait * 2, MAX_WAIT), attempt + 1
