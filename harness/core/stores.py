"""The databases the harness writes (the cache's `cache.sqlite`, Optuna's and MLflow's
stores): their URLs checked before anything is created, SQLite files checked to be SQLite,
and the file lock that serialises schema creation between processes.

A store given by URL is checked here, at the edge, so that a typo (`sqllite:///x.db`, a
folder that does not exist) or a damaged file is one line naming it, before any other
store has been touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from harness.core.errors import ConfigError, HarnessError

SQLITE_MAGIC = b"SQLite format 3\x00"
CACHE_ENV = "GRANALIGN_CACHE"
DEFAULT_CACHE = Path(".granalign") / "cache"
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql")
MLFLOW_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@\s]*@")
_QUERY_PASSWORD = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL password masked (`scheme://user:***@host`, `?password=***`)."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def default_cache_dir() -> Path:
    """The cache folder when none is given: `$GRANALIGN_CACHE`, else `.granalign/cache`."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


class StoreError(HarnessError):
    """A database that cannot be used as it is: damaged, not SQLite, unreadable."""


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
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StoreError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if head and head != SQLITE_MAGIC:
        raise StoreError(f"{path}: not an SQLite database (damaged, or another kind of file); "
                         f"expected the {what}")


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

