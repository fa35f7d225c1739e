"""The content-addressed cache of model outputs: the spine every run reads.

Each entry is keyed by the sha256 of the canonical JSON of what produced it (stage,
backend, model id and revision, prompt text, parameters) and of its input (a video, a
query). Text outputs live in one SQLite file (WAL mode, so Optuna workers read while a
builder writes); embedding matrices live beside it as `.npy` files named by their key,
written to a temporary file and renamed so that no reader ever sees half a matrix.

A `Cache` remembers what it served; `fingerprint()` hashes that, so a tracked run names the
exact cached outputs it was computed from.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError, StoreError
from harness.core.faults import fault_point
from harness.core.io import atomic_write_bytes, canonical_json, sha256_hex
from harness.core.stages import CACHE_STAGES, STAGES, stage_order
from harness.core.stores import check_sqlite_file, default_cache_dir, explain

STAGE_LABELS = {name: stage.label for name, stage in STAGES.items()}

@dataclass(frozen=True)
class Producer:
    """What made a cache entry. Two producers differing in anything give different keys.

    `params` holds whatever else changes the output (rewrites per pair, K_max, fps, ...).
    """

    stage: str
    backend: str
    model: str = ""
    revision: str = ""
    prompt: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in CACHE_STAGES:
            raise ValueError(f"unknown cache stage {self.stage!r}; valid: {', '.join(CACHE_STAGES)}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = dict(self.params)
        return d

    @cached_property
    def spec_json(self) -> str:
        """The canonical JSON of the producer, made once (keys are computed per item)."""
        return canonical_json(self.as_dict())

    @property
    def digest(self) -> str:
        return sha256_hex(self.spec_json)

    def key(self, item: Mapping[str, Any]) -> str:
        """The entry key: sha256 of the canonical JSON of producer and input, i.e. of
        `{"input": ..., "producer": ...}` with sorted keys, assembled from the cached parts."""
        return sha256_hex('{"input":' + canonical_json(dict(item)) + ',"producer":' + self.spec_json + "}")


@dataclass(frozen=True)
class Entry:
    key: str
    value: Any
    status: str  # "ok" | "failed"
    meta: dict[str, Any]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  key TEXT PRIMARY KEY,
  stage TEXT NOT NULL,
  backend TEXT NOT NULL,
  model TEXT NOT NULL,
  producer TEXT NOT NULL,
  item TEXT NOT NULL,
  value TEXT NOT NULL,
  value_hash TEXT NOT NULL,
  status TEXT NOT NULL,
  meta TEXT NOT NULL,
  created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_stage ON entries(stage, backend, producer);
CREATE TABLE IF NOT EXISTS producers (
  digest TEXT PRIMARY KEY,
  spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
  key TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  rows INTEGER NOT NULL,
  dim INTEGER NOT NULL,
  created REAL NOT NULL,
  digest TEXT NOT NULL DEFAULT '',
  size INTEGER NOT NULL DEFAULT -1,
  mtime_ns INTEGER NOT NULL DEFAULT -1
);
CREATE INDEX IF NOT EXISTS embeddings_model ON embeddings(model);
CREATE TABLE IF NOT EXISTS timings (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  stage TEXT NOT NULL,
  backend TEXT NOT NULL,
  model TEXT NOT NULL,
  items INTEGER NOT NULL,
  wall_s REAL NOT NULL,
  peak_mem_bytes INTEGER,
  device TEXT NOT NULL,
  meta TEXT NOT NULL,
  created REAL NOT NULL
);
"""


# a synthetic dataset's own cache, filled on first use: family -> (folder or None) -> Cache


_EMBEDDING_COLUMNS = {"digest": "TEXT NOT NULL DEFAULT ''", "size": "INTEGER NOT NULL DEFAULT -1",
                      "mtime_ns": "INTEGER NOT NULL DEFAULT -1"}


class CacheCorrupt(HarnessError):
    """A cached file whose bytes are not the ones recorded; the message names the file."""


def _create_schema(con: sqlite3.Connection) -> None:
    """The cache's tables, one statement at a time: executescript() would COMMIT an open
    transaction itself."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            con.execute(statement)


class Cache:
    """SQLite text store + `.npy` matrix store under one folder.

    Safe for several processes: SQLite in WAL mode with a busy timeout; matrices are
    written under a temp name and renamed. Each process opens its own `Cache`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, readonly: bool = False,
                 must_exist: bool = False) -> None:
        """`readonly`: reads only, and creates nothing: a folder without a cache reads as an
        empty cache (a run then reports what is missing), unless `must_exist`; a cache in a
        folder this user cannot write is read as it is."""
        self.root = Path(root) if root is not None else default_cache_dir()
        self.readonly = readonly
        self.db_path = self.root / "cache.sqlite"
        self.emb_dir = self.root / "embeddings"
        self.empty = False
        if self.root.exists() and not self.root.is_dir():
            raise HarnessError(f"{self.root}: expected a cache folder, found a file")
        if not readonly:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise HarnessError(f"{self.root}: cannot create the cache folder ({e.strerror})") from None
        elif not self.db_path.exists():
            if must_exist:
                raise FileNotFoundError(f"no cache at {self.root} (expected {self.db_path})")
            self.empty = True
        if not self.empty:
            check_sqlite_file(self.db_path, "cache database")
        self._local = threading.local()
        self._read: dict[str, str] = {}
        self._read_lock = threading.Lock()
        if not readonly:
            # executescript() would COMMIT the open transaction itself (and _Tx's COMMIT
            # then fails), so the statements run one by one inside one transaction
            with self._tx() as con:
                _create_schema(con)
                have = {row[1] for row in con.execute("PRAGMA table_info(embeddings)")}
                for column, decl in _EMBEDDING_COLUMNS.items():  # caches written before these
                    if column not in have:
                        con.execute(f"ALTER TABLE embeddings ADD COLUMN {column} {decl}")

    @property
    def absence_note(self) -> str:
        """Why a run found nothing, when the cause is the folder: told with the missing report."""
        if not self.empty:
            return ""
        return (f"there is no cache at {self.root} (no cache.sqlite): is --cache or $GRANALIGN_CACHE "
                "right, and was `make cache-qvh` run from this folder?")

    # -- connection ---------------------------------------------------------------------
    @property
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                con = self._connect()
            except sqlite3.Error as e:  # a full disk, a read-only or failing file: named, not a traceback
                reason = explain(e, f"sqlite:///{self.db_path}")
                if reason is None:
                    raise
                raise StoreError(f"{self.db_path}: the cache cannot be opened: {reason}") from None
            self._local.con = con
            self._local.pid = os.getpid()
        return con

    def _connect(self) -> sqlite3.Connection:
        """A new connection of this thread and process (see `_con`)."""
        if self.empty:  # an in-memory database with the schema and no rows
            con = sqlite3.connect(":memory:")
            _create_schema(con)
        elif self.readonly:
            # a WAL database read by a user who cannot write its folder cannot make the
            # `-shm` file that mode=ro needs: read it as immutable (nobody writes it then)
            flags = "mode=ro"
            if not os.access(self.root, os.W_OK):
                wal = self.db_path.with_name(self.db_path.name + "-wal")
                if wal.exists() and wal.stat().st_size > 0:
                    raise HarnessError(
                        f"{self.db_path}: this user cannot write the cache folder, and the cache has "
                        f"unmerged writes ({wal.name}); its owner can merge them by running any "
                        "granalign cache command (e.g. `granalign cache stats`)")
                flags = "immutable=1"
            con = sqlite3.connect(f"file:{self.db_path}?{flags}", uri=True, timeout=60)
        else:
            if not os.access(self.root, os.W_OK) or (self.db_path.exists() and not os.access(self.db_path, os.W_OK)):
                raise HarnessError(f"{self.db_path}: the cache is read-only for this user, and this "
                                   "command writes to it")
            con = sqlite3.connect(self.db_path, timeout=60)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
        return con

    class _Tx:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error; a full disk, a read-only
        file or an I/O error is one StoreError naming the cache database (SQLite says
        "database or disk is full", which is not damage)."""

        def __init__(self, con: sqlite3.Connection, db: Path) -> None:
            self.con = con
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self._do("BEGIN IMMEDIATE")
            return self.con

        def __exit__(self, exc_type: Any, exc: BaseException | None, _: Any) -> None:
            if exc_type is None:
                self._do("COMMIT")
                return
            with contextlib.suppress(sqlite3.Error):
                self.con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and (reason := explain(exc, f"sqlite:///{self.db}")) is not None:
                raise StoreError(f"{self.db}: the cache cannot be written: {reason}") from None

        def _do(self, sql: str) -> None:
            try:
                self.con.execute(sql)
            except sqlite3.Error as e:
                reason = explain(e, f"sqlite:///{self.db}")
                if reason is None:
                    raise
                with contextlib.suppress(sqlite3.Error):
                    self.con.execute("ROLLBACK")
                raise StoreError(f"{self.db}: the cache cannot be written: {reason}") from None

    def _tx(self) -> Cache._Tx:
        return Cache._Tx(self._con, self.db_path)

    def transaction(self) -> Cache._Tx:
        """`with cache.transaction() as con:` statements that commit together or not at all."""
        if self.readonly:
            raise PermissionError(f"cache {self.root} is open read-only")
        return self._tx()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement on the cache's tables (merging, reports)."""
        return self._con.execute(sql, args).fetchall()

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- text entries -------------------------------------------------------------------
    def put(
        self,
        producer: Producer,
        item: Mapping[str, Any],
        value: Any,
        status: str = "ok",
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        return self.put_many(producer, [(item, value, status, meta)])[0]

    def put_many(
        self,
        producer: Producer,
        rows: Iterable[tuple[Mapping[str, Any], Any, str, Mapping[str, Any] | None]],
    ) -> list[str]:
        """Insert or replace entries in one transaction: all land, or none."""
        if producer.stage == "embeddings":
            raise ValueError("embeddings go through put_embeddings, not put")
        if self.readonly:
            raise PermissionError(f"cache {self.root} is open read-only")
        now = time.time()
        keys, records = [], []
        spec = canonical_json(producer.as_dict())
        for item, value, status, meta in rows:
            if status not in ("ok", "failed"):
                raise ValueError(f"status must be 'ok' or 'failed', got {status!r}")
            key = producer.key(item)
            value_json = canonical_json(value)
            records.append(
                (
                    key, producer.stage, producer.backend, producer.model, producer.digest,
                    canonical_json(dict(item)), value_json, sha256_hex(value_json), status,
                    canonical_json(dict(meta or {})), now,
                )
            )
            keys.append(key)
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO producers(digest, spec) VALUES (?, ?)", (producer.digest, spec)
            )
            con.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?)", records
            )
        return keys

    def get(self, producer: Producer, item: Mapping[str, Any]) -> Entry | None:
        return self.get_many(producer, [item]).get(producer.key(item))

    def get_many(
        self, producer: Producer, items: Sequence[Mapping[str, Any]]
    ) -> dict[str, Entry]:
        """key -> Entry for the items that are cached (failed ones included)."""
        keys = [producer.key(it) for it in items]
        out: dict[str, Entry] = {}
        for chunk in _chunks(keys, 500):
            marks = ",".join("?" * len(chunk))
            cur = self._con.execute(
                f"SELECT key, value, value_hash, status, meta FROM entries WHERE key IN ({marks})",
                chunk,
            )
            for key, value, value_hash, status, meta in cur:
                out[key] = Entry(key, json.loads(value), status, json.loads(meta))
                self._remember(key, value_hash)
        return out

    def producers(self, stage: str | None = None) -> list[Producer]:
        """The producers that wrote entries here (optionally of one stage), oldest first.

        How `embed_dataset` finds every caption set and variant list a run may ask for
        without the caller naming them: whatever was imported or built gets embedded.
        """
        if stage is not None and stage not in CACHE_STAGES:
            raise ValueError(f"unknown cache stage {stage!r}; valid: {', '.join(CACHE_STAGES)}")
        out = []
        for (spec,) in self._con.execute("SELECT spec FROM producers ORDER BY rowid"):
            d = json.loads(spec)
            if stage is None or d["stage"] == stage:
                out.append(Producer(**d))
        return out

    def missing(self, producer: Producer, items: Sequence[Mapping[str, Any]]) -> list[int]:
        """Indices of `items` with no entry (any status): what a builder still has to do."""
        keys = [producer.key(it) for it in items]
        have: set[str] = set()
        for chunk in _chunks(keys, 500):
            marks = ",".join("?" * len(chunk))
            have.update(
                k for (k,) in self._con.execute(f"SELECT key FROM entries WHERE key IN ({marks})", chunk)
            )
        return [i for i, k in enumerate(keys) if k not in have]

    # -- embedding matrices --------------------------------------------------------------
    @staticmethod
    def embedding_key(model: str, texts: Sequence[str]) -> str:
        """Content address of a matrix: the embedder and the exact texts, in order."""
        return sha256_hex(canonical_json({"stage": "embeddings", "model": model, "texts": list(texts)}))

    def matrix_path(self, key: str) -> Path:
        """Where an embedding matrix's `.npy` lives."""
        return self._emb_path(key)

    def _emb_path(self, key: str) -> Path:
        return self.emb_dir / key[:2] / f"{key}.npy"

    def put_embeddings(self, model: str, texts: Sequence[str], matrix: np.ndarray) -> str:
        """Store one matrix: the `.npy` first (atomically), then its row with the sha256 of
        its bytes and the file's size and mtime. A matrix counts as cached only once its
        row exists, so a crash between the two leaves a file that is simply written again."""
        if self.readonly:
            raise PermissionError(f"cache {self.root} is open read-only")
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise ValueError(f"expected a ({len(texts)}, dim) matrix, got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError(f"embedding matrix of {model} for {len(texts)} texts has non-finite values "
                             f"(first text: {texts[0][:80]!r}); nothing was stored")
        key = self.embedding_key(model, texts)
        buf = io.BytesIO()
        np.save(buf, matrix, allow_pickle=False)
        data = buf.getvalue()
        path = self._emb_path(key)
        atomic_write_bytes(path, data)
        fault_point("put_embeddings:between-file-and-row")
        st = path.stat()
        with self._tx() as con:
            con.execute(
                "INSERT OR REPLACE INTO embeddings(key, model, rows, dim, created, digest, size, mtime_ns) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (key, model, matrix.shape[0], matrix.shape[1], time.time(), sha256_hex(data), st.st_size,
                 st.st_mtime_ns),
            )
        return key

    def get_embeddings(self, model: str, texts: Sequence[str]) -> np.ndarray | None:
        return self.get_embeddings_many(model, [texts])[0]

    def get_embeddings_many(self, model: str, lists: Sequence[Sequence[str]]) -> list[np.ndarray | None]:
        """The matrices of many text lists (None where not cached), read without `np.load`:
        the row gives the shape, so the data is the file's last rows*dim*4 bytes. Every file
        is hashed; if its bytes are not the ones written, the cache is corrupt and the error
        names the file. An empty list gives a
        (0, dim) matrix."""
        keys = [self.embedding_key(model, t) for t in lists]
        known: dict[str, tuple[int, int, str, int, int]] = {}
        for chunk in _chunks(list(dict.fromkeys(k for k, t in zip(keys, lists, strict=True) if t)), 500):
            marks = ",".join("?" * len(chunk))
            for key, rows, dim, digest, size, mtime_ns in self._con.execute(
                f"SELECT key, rows, dim, digest, size, mtime_ns FROM embeddings WHERE key IN ({marks})", chunk
            ):
                known[key] = (rows, dim, digest, size, mtime_ns)
        dim = next((v[1] for v in known.values()), 0)
        out: list[np.ndarray | None] = []
        read: dict[str, np.ndarray] = {}
        for key, texts in zip(keys, lists, strict=True):
            if not texts:
                out.append(np.zeros((0, dim), dtype=np.float32))
            elif key in read:
                out.append(read[key])
            elif key not in known:
                out.append(None)
            else:
                read[key] = self._read_matrix(key, *known[key])
                out.append(read[key])
        return out

    def _read_matrix(self, key: str, rows: int, dim: int, digest: str, size: int, mtime_ns: int) -> np.ndarray:
        path = self._emb_path(key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            raise CacheCorrupt(f"{path}: embedding matrix missing (its row says {rows}x{dim}); "
                               "run granalign cache embed to write it again") from None
        # every byte read is hashed (sha256 runs at about 1.7 GB/s: 0.25 s for all of a split's
        # mpnet matrices, once per process): a file changed in place, even with its size and
        # mtime kept, is caught, and the fingerprint covers what was actually read
        actual = sha256_hex(data)
        if digest and actual != digest:
            raise CacheCorrupt(
                f"{path}: embedding matrix changed since it was written (sha256 {actual[:12]}, "
                f"expected {digest[:12]}); delete it and run granalign cache embed")
        if not digest:  # a row from before digests were recorded: record them now
            digest = actual
            if not self.readonly:
                with self._tx() as con:
                    con.execute("UPDATE embeddings SET digest=?, size=?, mtime_ns=? WHERE key=?",
                                (digest, st.st_size, st.st_mtime_ns, key))
        n = rows * dim * 4
        if len(data) < n:
            raise CacheCorrupt(f"{path}: {len(data)} bytes, expected a {rows}x{dim} float32 matrix")
        matrix = np.frombuffer(data, dtype="<f4", offset=len(data) - n).reshape(rows, dim)
        self._remember(key, digest)
        return matrix

    def get_embeddings_by_key(self, key: str) -> np.ndarray:
        """A cached matrix by its key (checked as every read is)."""
        row = self._con.execute(
            "SELECT rows, dim, digest, size, mtime_ns FROM embeddings WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"no embedding matrix {key} in {self.root}")
        return self._read_matrix(key, *row)

    def has_embeddings(self, model: str, texts: Sequence[str]) -> bool:
        """Cached means: the row exists (a file without its row is an interrupted write)."""
        key = self.embedding_key(model, texts)
        return self._con.execute("SELECT 1 FROM embeddings WHERE key=?", (key,)).fetchone() is not None

    # -- efficiency records (Table 4) -------------------------------------------------------
    def record_timing(
        self,
        producer: Producer,
        items: int,
        wall_s: float,
        peak_mem_bytes: int | None,
        device: str,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO timings(stage, backend, model, items, wall_s, peak_mem_bytes, device,"
                " meta, created) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    producer.stage, producer.backend, producer.model, items, wall_s,
                    peak_mem_bytes, device, canonical_json(dict(meta or {})), time.time(),
                ),
            )

    def timings(self) -> list[dict[str, Any]]:
        cur = self._con.execute(
            "SELECT stage, backend, model, items, wall_s, peak_mem_bytes, device, meta, created "
            "FROM timings ORDER BY id"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    # -- reporting ----------------------------------------------------------------------
    def stats(self) -> list[dict[str, Any]]:
        """Per stage, backend and model: entries cached (ok / failed)."""
        rows = []
        cur = self._con.execute(
            "SELECT stage, backend, model, SUM(status='ok'), SUM(status='failed') FROM entries "
            "GROUP BY stage, backend, model"
        )
        for stage, backend, model, ok, failed in cur:
            rows.append(
                {"stage": stage, "backend": backend, "model": model, "ok": ok, "failed": failed}
            )
        cur = self._con.execute(
            "SELECT model, COUNT(*), SUM(rows) FROM embeddings GROUP BY model"
        )
        for model, n, total in cur:
            rows.append(
                {"stage": "embeddings", "backend": "sentence-transformers", "model": model,
                 "ok": n, "failed": 0, "rows": total}
            )
        return sorted(rows, key=lambda r: (stage_order(r["stage"]), r["backend"], r["model"]))

    def _remember(self, key: str, content_hash: str) -> None:
        with self._read_lock:
            self._read[key] = content_hash

    def reset_reads(self) -> None:
        with self._read_lock:
            self._read.clear()

    def fingerprint(self) -> str:
        """sha256 over (key, content hash) of everything this Cache served, sorted."""
        with self._read_lock:
            pairs = sorted(self._read.items())
        return sha256_hex(canonical_json(pairs))

    @property
    def reads(self) -> int:
        return len(self._read)


def _chunks(seq: Sequence[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(seq), n):
        yield list(seq[i : i + n])
