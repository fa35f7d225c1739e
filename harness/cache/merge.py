"""Joining caches built on separate machines (`granalign cache build --shard i/N`).

Entries are content-addressed, so a merge is a union: an entry (or embedding matrix, or
frame archive) the target lacks is copied; one it has with the same content is skipped;
one with the same key and different content is an error naming the key and both sources
(two builders disagreed: a different model behind the same name, a non-deterministic
backend). Every entry is copied in its own transaction and every file atomically, so a
merge interrupted halfway and run again ends in the same cache. `content_fingerprint` is
the same for the union of shards as for one unsharded build.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from harness.cache.store import Cache
from harness.core.errors import HarnessError
from harness.core.faults import fault_point
from harness.core.io import atomic_write_bytes, canonical_json, sha256_hex


class MergeConflict(HarnessError):
    """The same key with different content in two caches."""


@dataclass
class MergeReport:
    into: str
    sources: list[str]
    entries: dict[str, int] = field(default_factory=lambda: {"copied": 0, "same": 0})
    embeddings: dict[str, int] = field(default_factory=lambda: {"copied": 0, "same": 0})
    files: dict[str, int] = field(default_factory=lambda: {"copied": 0, "same": 0})
    timings: int = 0

    def lines(self) -> list[str]:
        return [
            f"merged {len(self.sources)} cache(s) into {self.into}",
            f"  entries:    {self.entries['copied']} copied, {self.entries['same']} already there",
            f"  embeddings: {self.embeddings['copied']} copied, {self.embeddings['same']} already there",
            f"  frame files: {self.files['copied']} copied, {self.files['same']} already there",
            f"  timing records: {self.timings} copied",
            f"  content fingerprint: {content_fingerprint(Cache(self.into, readonly=True))[:16]}",
        ]


def content_fingerprint(cache: Cache) -> str:
    """sha256 over every entry's (key, content hash, status) and every embedding matrix's
    key, sorted: equal for equal contents, whatever order they were written in.

    A matrix's key names the model and the exact texts; its bytes differ in the last bits
    between machines and batchings (a text encoded beside other texts is padded
    differently), so they are compared with a tolerance (`MATRIX_ATOL`), not hashed here.
    Build timings are not content (they differ between machines) and are left out."""
    entries = cache.query("SELECT key, value_hash, status FROM entries ORDER BY key")
    matrices = cache.query("SELECT key FROM embeddings ORDER BY key")
    return sha256_hex(canonical_json({"entries": entries, "embeddings": matrices}))


MATRIX_ATOL = 1e-4  # unit-norm embeddings: float noise is ~1e-7, another model ~1e-1


def merge_caches(sources: Sequence[str | Path], into: str | Path, progress: bool = True) -> MergeReport:
    """Copy into `into` everything `sources` hold that it lacks; conflicts are errors."""
    opened = [Cache(p, readonly=True, must_exist=True) for p in sources]  # every source exists, first
    target = Cache(into)
    report = MergeReport(str(target.root), [str(s) for s in sources])
    for src in opened:
        if src.root.resolve() == target.root.resolve():
            raise HarnessError(f"cannot merge {src.root} into itself")
        _merge_entries(src, target, report, progress)
        _merge_embeddings(src, target, report, progress)
        _merge_files(src, target, report)
        _merge_timings(src, target, report)
    return report


def _conflict(what: str, key: str, a: str, b: str) -> MergeConflict:
    return MergeConflict(
        f"{what} {key} differs between {a} and {b}: the same inputs gave different outputs "
        "(another model or prompt under the same name, or a non-deterministic backend); "
        "rebuild one of them, or merge into separate caches")


def _merge_entries(src: Cache, target: Cache, report: MergeReport, progress: bool) -> None:
    rows = src.query("SELECT * FROM entries")
    specs = src.query("SELECT digest, spec FROM producers")
    have = dict(target.query("SELECT key, value_hash FROM entries"))
    with target.transaction() as con:
        con.executemany("INSERT OR IGNORE INTO producers(digest, spec) VALUES (?, ?)", specs)
    for row in tqdm(rows, desc=f"entries from {src.root}", disable=not progress, unit="entry"):
        key, value_hash = row[0], row[7]
        if key in have:
            if have[key] != value_hash:
                raise _conflict("cache entry", key, str(src.root), str(target.root))
            report.entries["same"] += 1
            continue
        fault_point("merge:entry")
        with target.transaction() as con:
            con.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
        have[key] = value_hash
        report.entries["copied"] += 1


def _merge_embeddings(src: Cache, target: Cache, report: MergeReport, progress: bool) -> None:
    rows = src.query("SELECT key, model, rows, dim, created, digest FROM embeddings")
    have = dict(target.query("SELECT key, digest FROM embeddings"))
    for key, model, n_rows, dim, created, digest in tqdm(rows, desc=f"embeddings from {src.root}",
                                                         disable=not progress, unit="matrix"):
        src_file = src.matrix_path(key)
        data = src_file.read_bytes()
        actual = sha256_hex(data)
        if digest and actual != digest:
            raise HarnessError(f"{src_file}: its bytes are not the ones recorded (sha256 {actual[:12]}, "
                               f"expected {digest[:12]}): the source cache is damaged")
        if key in have:
            mine = target.get_embeddings_by_key(key)
            theirs = np.frombuffer(data, dtype="<f4", offset=len(data) - n_rows * dim * 4).reshape(n_rows, dim)
            if mine.shape != theirs.shape or not np.allclose(mine, theirs, atol=MATRIX_ATOL):
                raise _conflict("embedding matrix", key, str(src.root), str(target.root))
            report.embeddings["same"] += 1
            continue
        path = target.matrix_path(key)
        atomic_write_bytes(path, data)  # the file first, then its row: a crash rewrites it
        st = path.stat()
        with target.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO embeddings(key, model, rows, dim, created, digest, size, mtime_ns) "
                "VALUES (?,?,?,?,?,?,?,?)", (key, model, n_rows, dim, created, actual, st.st_size, st.st_mtime_ns))
        have[key] = actual
        report.embeddings["copied"] += 1


def _merge_files(src: Cache, target: Cache, report: MergeReport) -> None:
    """The frame store (one archive per video): copied when absent, compared when present."""
    folder = src.root / "frames"
    if not folder.is_dir():
        return
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        dest = target.root / f.relative_to(src.root)
        if dest.exists():
            if dest.read_bytes() != f.read_bytes():
                raise _conflict("frame file", str(f.relative_to(src.root)), str(src.root), str(target.root))
            report.files["same"] += 1
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.merging")
        shutil.copyfile(f, tmp)
        tmp.replace(dest)
        report.files["copied"] += 1


def _merge_timings(src: Cache, target: Cache, report: MergeReport) -> None:
    """Build timings (Table 4) of every shard: appended once (a rerun adds none again)."""
    cols = "stage, backend, model, items, wall_s, peak_mem_bytes, device, meta, created"
    rows = src.query(f"SELECT {cols} FROM timings")
    have = {json.dumps(r) for r in target.query(f"SELECT {cols} FROM timings")}
    new = [r for r in rows if json.dumps(r) not in have]
    if new:
        with target.transaction() as con:
            con.executemany(f"INSERT INTO timings({cols}) VALUES (?,?,?,?,?,?,?,?,?)", new)
    report.timings += len(new)
    frame_timings = src.root / "frame_timings.jsonl"
    if frame_timings.is_file():
        mine = target.root / "frame_timings.jsonl"
        lines = mine.read_text().splitlines() if mine.is_file() else []
        extra = [line for line in frame_timings.read_text().splitlines() if line and line not in lines]
        if extra:
            atomic_write_bytes(mine, ("\n".join([*lines, *extra]) + "\n").encode("utf-8"))


__all__ = ["MergeConflict", "MergeReport", "content_fingerprint", "merge_caches"]
