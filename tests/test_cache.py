"""The content-addressed cache: keys, round trips, fingerprints, concurrency, crash safety."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import harness.cache.store as cache_mod
from harness.cache.store import Cache, Producer
from harness.cli import main
from harness.core.io import atomic_write_bytes

BASE = Producer("variants", "hf-causal-lm", "m", "r1", "prompt", {"pair": 1, "m": 5})
ITEM = {"query": "a man cooks"}


# -- keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"stage": "frame_scores"},
        {"backend": "other"},
        {"model": "m2"},
        {"revision": "r2"},
        {"prompt": "prompt!"},
        {"params": {"pair": 2, "m": 5}},
        {"params": {"pair": 1, "m": 5, "extra": 0}},
        {"params": {"pair": 1}},
    ],
)
def test_key_changes_with_every_producer_field(change: dict[str, Any]) -> None:
    other = dataclasses.replace(BASE, **change)
    assert other.key(ITEM) != BASE.key(ITEM)
    assert other.digest != BASE.digest


def test_key_changes_with_input_and_ignores_dict_order() -> None:
    assert BASE.key({"query": "a man cooks."}) != BASE.key(ITEM)
    assert BASE.key({"query": "a man cooks", "vid": "x"}) != BASE.key(ITEM)
    reordered = Producer("variants", "hf-causal-lm", "m", "r1", "prompt", {"m": 5, "pair": 1})
    assert reordered.key(ITEM) == BASE.key(ITEM)
    a = {"dataset": "qv", "vid": "v1"}
    assert BASE.key(a) == BASE.key(dict(reversed(list(a.items()))))


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown cache stage 'captions'"):
        Producer("captions", "x")


# -- text entries ---------------------------------------------------------------------------
def test_put_get_round_trip_and_stats(cache_dir: Path) -> None:
    c = Cache(cache_dir)
    value = {"qs": ["a", "b"], "qd": ["ünïcode ✓", "d"]}
    key = c.put(BASE, ITEM, value, meta={"raw": ["x"]})
    assert key == BASE.key(ITEM)
    e = c.get(BASE, ITEM)
    assert e is not None and e.value == value and e.status == "ok" and e.meta == {"raw": ["x"]}
    assert c.get(BASE, {"query": "never written"}) is None
    # a second process-level open sees it too
    e2 = Cache(cache_dir, readonly=True).get(BASE, ITEM)
    assert e2 is not None and e2.value == value
    # replacing an entry keeps one row
    c.put(BASE, ITEM, {"qs": ["z"]})
    assert c.get(BASE, ITEM).value == {"qs": ["z"]}  # type: ignore[union-attr]
    assert c.stats() == [
        {"stage": "variants", "backend": "hf-causal-lm", "model": "m", "ok": 1, "failed": 0}
    ]


def test_failed_status_is_stored_and_counted(cache_dir: Path) -> None:
    c = Cache(cache_dir)
    c.put(BASE, ITEM, {"qs": ["only one parsed"]}, status="failed", meta={"error": "bad JSON"})
    c.put(BASE, {"query": "ok one"}, {"qs": ["x"]})
    e = c.get(BASE, ITEM)
    assert e is not None and e.status == "failed" and e.meta["error"] == "bad JSON"
    assert c.stats()[0]["ok"] == 1 and c.stats()[0]["failed"] == 1
    with pytest.raises(ValueError, match="status must be 'ok' or 'failed'"):
        c.put(BASE, ITEM, {}, status="done")


def test_missing_lists_indices_without_an_entry(cache_dir: Path) -> None:
    c = Cache(cache_dir)
    items = [{"query": f"q{i}"} for i in range(1200)]  # more than one 500-key chunk
    c.put_many(BASE, [(items[i], {"qs": [str(i)]}, "ok", None) for i in range(0, 1200, 3)])
    c.put(BASE, items[1], {}, status="failed")  # failed counts as present: don't redo blindly
    expect = [i for i in range(1200) if i % 3 != 0 and i != 1]
    assert c.missing(BASE, items) == expect
    other = dataclasses.replace(BASE, revision="r2")
    assert c.missing(other, items) == list(range(1200))


def test_put_many_is_all_or_nothing(cache_dir: Path) -> None:
    c = Cache(cache_dir)
    rows = [({"query": "a"}, 1, "ok", None), ({"query": "b"}, 2, "bogus", None)]
    with pytest.raises(ValueError):
        c.put_many(BASE, rows)
    assert c.missing(BASE, [{"query": "a"}, {"query": "b"}]) == [0, 1]


def test_producers_lists_writers_by_stage(cache_dir: Path) -> None:
    c = Cache(cache_dir)
    cap = Producer("captions_agnostic", "minigptv2", "mm", params={"fps": 0.5})
    c.put(BASE, ITEM, {"qs": []})
    c.put(cap, {"dataset": "qv", "vid": "v"}, ["x"])
    c.put(cap, {"dataset": "qv", "vid": "w"}, ["y"])
    assert c.producers("variants") == [BASE]
    assert c.producers("captions_agnostic") == [cap]
    assert c.producers("captions_aware") == []
    assert c.producers() == [BASE, cap]
    with pytest.raises(ValueError, match="unknown cache stage"):
        c.producers("nope")


# -- embeddings -----------------------------------------------------------------------------
def test_embeddings_round_trip(cache_dir: Path) -> None:
    c = Cache(cache_dir)
    texts = ["a cat", "a dog", "a cat", "a bird"]
    m = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float64)
    assert not c.has_embeddings("emb", texts) and c.get_embeddings("emb", texts) is None
    c.put_embeddings("emb", texts, m)
    got = c.get_embeddings("emb", texts)
    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got, m.astype(np.float32))
    assert c.has_embeddings("emb", texts)
    # addressed by model and the exact texts, in order
    assert c.get_embeddings("emb2", texts) is None
    assert c.get_embeddings("emb", texts[::-1]) is None
    assert c.get_embeddings("emb", texts[:2]) is None
    with pytest.raises(ValueError, match=r"expected a \(2, dim\) matrix"):
        c.put_embeddings("emb", texts[:2], m)
    assert [r["rows"] for r in c.stats() if r["stage"] == "embeddings"] == [4]
    with pytest.raises(ValueError, match="put_embeddings"):
        c.put(Producer("embeddings", "x"), ITEM, [1.0])


# -- fingerprint ----------------------------------------------------------------------------
def test_fingerprint_tracks_reads_not_their_order(cache_dir: Path) -> None:
    w = Cache(cache_dir)
    items = [{"query": f"q{i}"} for i in range(3)]
    for i, it in enumerate(items):
        w.put(BASE, it, {"qs": [str(i)]})
    w.put_embeddings("emb", ["t"], np.ones((1, 4)))

    def fp(order: list[int], emb: bool = True) -> str:
        r = Cache(cache_dir, readonly=True)
        for i in order:
            r.get(BASE, items[i])
        if emb:
            r.get_embeddings("emb", ["t"])
        return r.fingerprint()

    empty = Cache(cache_dir, readonly=True).fingerprint()
    assert fp([0, 1, 2]) == fp([2, 0, 1]) == fp([1, 2, 0, 1])
    assert fp([0, 1]) != fp([0, 1, 2])
    assert fp([0, 1, 2], emb=False) != fp([0, 1, 2])
    assert fp([0, 1, 2]) != empty
    r = Cache(cache_dir, readonly=True)
    r.get_many(BASE, items)
    assert r.reads == 3 and r.fingerprint() == fp([0, 1, 2], emb=False)
    r.reset_reads()
    assert r.fingerprint() == empty
    # same keys, different content -> different fingerprint
    before = fp([0, 1, 2])
    w.put(BASE, items[2], {"qs": ["changed"]})
    assert fp([0, 1, 2]) != before


def _toy_inputs(root: Path) -> tuple[Cache, Any, Any]:
    """Two queries on two videos: agnostic captions, paraphrases and embeddings written by
    hand (a unit vector per text from its hash), and the source spec that reads them."""
    from harness.cache.producers import (
        caption_producer,
        paraphrase_producer,
        query_item,
        video_item,
    )
    from harness.core.query import Dataset, Query
    from harness.method.sources import SourceSpec

    w = ((0.0, 2.0),)
    ds = Dataset("toy:val", (Query(0, "v0", "a dog runs", 6.0, w), Query(1, "v1", "a cat sits", 4.0, w)),
                 "toy", "toy", "val")
    cache = Cache(root)
    captions = {"v0": ["a dog", "grass", "a dog runs"], "v1": ["a cat", "a sofa"]}
    for vid, texts in captions.items():
        cache.put(caption_producer("minigptv2", "agnostic"), video_item("toy", vid), texts)
    for q in ds.queries:
        cache.put(paraphrase_producer(), query_item(q), {"qp": [f"{q.query} ({k})" for k in range(2)]})
    lists = [[q.query] for q in ds.queries] + list(captions.values())
    lists += [[f"{q.query} ({k})" for k in range(2)] for q in ds.queries]
    for texts in lists:
        embed_by_hash(cache, texts)
    spec = SourceSpec("toy:val", "minigptv2", None, "clip-vit-b32", None, "hf-causal-lm", "x", 1, ("emb",))
    return cache, ds, spec


def embed_by_hash(cache: Cache, texts: list[str], salt: str = "") -> None:
    import hashlib

    rows = [np.frombuffer(hashlib.sha256((salt + t).encode()).digest(), dtype=np.uint8)[:8] for t in texts]
    x = np.asarray(rows, dtype=np.float32) - 127.5
    cache.put_embeddings("emb", texts, x / np.linalg.norm(x, axis=1, keepdims=True))


def test_a_runs_fingerprint_covers_the_content_it_read(cache_dir: Path) -> None:
    """The fingerprint a run records (Prepared.fingerprint) names exactly what it read: the
    same inputs give the same one in any process; a changed caption, a changed embedding
    of the same texts or a pairing that reads more give another; data it did not read
    changes nothing."""
    from harness.cache.producers import caption_producer, video_item
    from harness.method.sources import prepare

    cache, ds, spec = _toy_inputs(cache_dir)

    def fp(pairs: tuple[tuple[str, str], ...] = (("q", "Ca"),)) -> str:
        return prepare(Cache(cache_dir, readonly=True), ds, spec, pairs).fingerprint

    base = fp()
    assert len(base) == 64 and fp() == base
    assert fp((("q", "Ca"), ("qp", "Ca"))) != base  # reads the paraphrases too
    shared = Cache(cache_dir, readonly=True)  # one Cache serving two runs: each its own reads
    prepare(shared, ds, spec, (("q", "Ca"), ("qp", "Ca")))
    assert prepare(shared, ds, spec, (("q", "Ca"),)).fingerprint == base
    cache.put(caption_producer("minigptv2", "agnostic"), video_item("toy", "v9"), ["not read"])
    embed_by_hash(cache, ["not read"])
    assert fp() == base  # another video's captions: not read, not covered
    embed_by_hash(cache, ["a cat", "a sofa"], salt="other model weights")
    changed_embedding = fp()
    assert changed_embedding != base  # same texts, other vectors
    cache.put(caption_producer("minigptv2", "agnostic"), video_item("toy", "v1"), ["a cat", "a bed"])
    embed_by_hash(cache, ["a cat", "a bed"])
    assert fp() not in (base, changed_embedding)  # another caption


# -- several processes ----------------------------------------------------------------------
N_ITEMS = 40


def _matrix(i: int) -> np.ndarray:
    """Big enough (256 KB) that a reader racing a non-atomic write would catch it torn."""
    return np.full((64, 1024), float(i), dtype=np.float32)


def _writer(root: str, w: int) -> None:
    c = Cache(root)
    cap = Producer("captions_agnostic", "b", "m")
    # writers overlap: every item is written by two of the three, with the same content
    for i in range(N_ITEMS):
        if i % 3 != w:
            c.put(cap, {"vid": f"v{i}"}, [f"caption {i}"] * 5)
            c.put_embeddings("emb", [f"text {i}", "big"], _matrix(i)[:2])
            c.put_embeddings("big", [f"text {i}"] * 64, _matrix(i))


def _reader(root: str, out: Any) -> None:
    """Read until every item has been seen complete (or 90 s): reads overlap the writes."""
    import time

    c = Cache(root, readonly=True)
    cap = Producer("captions_agnostic", "b", "m")
    reads = bad = 0
    done: set[int] = set()
    deadline = time.monotonic() + 90
    while len(done) < N_ITEMS and time.monotonic() < deadline:
        for i in range(N_ITEMS):
            try:
                e = c.get(cap, {"vid": f"v{i}"})
                m = c.get_embeddings("big", [f"text {i}"] * 64)
            except Exception:  # a torn .npy fails to load: that is the failure we look for
                bad += 1
                continue
            if e is not None:
                reads += 1
                bad += e.value != [f"caption {i}"] * 5
            if m is not None:
                reads += 1
                bad += m.shape != (64, 1024) or not np.all(m == float(i))
            if e is not None and m is not None:
                done.add(i)
    out.put((len(done), reads, bad))


def test_concurrent_writers_and_readers_lose_nothing(cache_dir: Path) -> None:
    Cache(cache_dir)  # create the schema first, as a builder does
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(cache_dir), w)) for w in range(3)]
    procs += [ctx.Process(target=_reader, args=(str(cache_dir), out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(2)]
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, f"process {p.name} exited with {p.exitcode}"
    assert all(done == N_ITEMS and bad == 0 for done, _, bad in results), results
    c = Cache(cache_dir, readonly=True)
    cap = Producer("captions_agnostic", "b", "m")
    assert c.missing(cap, [{"vid": f"v{i}"} for i in range(N_ITEMS)]) == []
    for i in range(N_ITEMS):
        m = c.get_embeddings("big", [f"text {i}"] * 64)
        assert m is not None and np.all(m == float(i))
        m2 = c.get_embeddings("emb", [f"text {i}", "big"])
        assert m2 is not None and m2.shape == (2, 1024)
    assert c.stats()[0]["ok"] == N_ITEMS
    rows = dict(sqlite3.connect(c.db_path).execute("SELECT model, COUNT(*) FROM embeddings GROUP BY model"))
    assert rows == {"emb": N_ITEMS, "big": N_ITEMS}
    assert not list(c.emb_dir.rglob("*.tmp"))


# -- crash safety ---------------------------------------------------------------------------
class _Boom(RuntimeError):
    pass


def _crashing_fdopen(real: Any) -> Any:
    def fdopen(fd: int, mode: str = "r", *a: Any, **kw: Any) -> Any:
        f = real(fd, mode, *a, **kw)

        class Half:
            def __enter__(self) -> Half:
                return self

            def __exit__(self, *exc: Any) -> None:
                f.close()

            def write(self, data: bytes) -> int:
                f.write(data[: len(data) // 2])
                f.flush()
                raise _Boom("disk gone mid-write")

        return Half()

    return fdopen


def test_crash_mid_write_leaves_no_partial_file(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cache(cache_dir)
    old = np.arange(12, dtype=np.float32).reshape(3, 4)
    c.put_embeddings("emb", ["a", "b", "c"], old)
    monkeypatch.setattr(cache_mod.os, "fdopen", _crashing_fdopen(os.fdopen))
    with pytest.raises(_Boom):
        c.put_embeddings("emb", ["x"], np.ones((1, 4)))
    with pytest.raises(_Boom):  # overwriting an existing matrix keeps the old one whole
        c.put_embeddings("emb", ["a", "b", "c"], np.zeros((3, 4)))
    with pytest.raises(_Boom):
        atomic_write_bytes(cache_dir / "plain.bin", b"0123456789")
    monkeypatch.undo()
    assert not c.has_embeddings("emb", ["x"]) and c.get_embeddings("emb", ["x"]) is None
    np.testing.assert_array_equal(c.get_embeddings("emb", ["a", "b", "c"]), old)
    assert not (cache_dir / "plain.bin").exists()
    leftovers = [p for p in cache_dir.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == []
    assert len(list(c.emb_dir.rglob("*.npy"))) == 1
    n = sqlite3.connect(c.db_path).execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    assert n == 1  # no index row for the matrix that never landed


# -- opening --------------------------------------------------------------------------------
def test_readonly_open_of_missing_cache_errors_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"no cache at .*nowhere \(expected .*cache\.sqlite\)"):
        Cache(missing, readonly=True, must_exist=True)
    # a run reads a missing cache as an empty one (and reports what it lacks)
    empty = Cache(missing, readonly=True)
    assert empty.stats() == [] and empty.get(BASE, ITEM) is None
    assert not empty.has_embeddings("emb", ["a"])
    assert not missing.exists()  # a read-only open never creates the folder
    assert main(["cache", "stats", "--cache", str(missing)]) == 2
    assert "no cache at" in capsys.readouterr().err


def test_readonly_cache_refuses_writes(cache_dir: Path) -> None:
    Cache(cache_dir)
    r = Cache(cache_dir, readonly=True)
    with pytest.raises(PermissionError, match="read-only"):
        r.put(BASE, ITEM, 1)
    with pytest.raises(PermissionError, match="read-only"):
        r.put_embeddings("emb", ["a"], np.ones((1, 2)))


def test_cache_env_var_sets_the_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANALIGN_CACHE", str(tmp_path / "envcache"))
    c = Cache()
    assert c.root == tmp_path / "envcache" and (c.root / "cache.sqlite").is_file()


def test_stats_cli_prints_entries(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Cache(cache_dir)
    c.put(BASE, ITEM, {"qs": ["x"]})
    c.put_embeddings("emb", ["a", "b"], np.ones((2, 3)))
    assert main(["cache", "stats", "--cache", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "query variants" in out and "hf-causal-lm" in out and "(2 rows)" in out
