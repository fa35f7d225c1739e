"""`granalign cache build` end to end on tiny random models and synthetic videos.

The dataset is a QVHighlights-format jsonl in a temporary data root: two real videos (12 s
and 8 s of coloured scenes), one video id with no file and one undecodable file. Values of
random models are gibberish, so the tests compare structure, keys and whole caches:
an uninterrupted build vs. a build killed midway and rerun, vs. two shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import cli
from harness.builder.backends import Rewriter, candidate_frames
from harness.builder.backends import testing as tiny
from harness.builder.backends.rewrite import RewriteResult
from harness.builder.batching import shard_of
from harness.builder.builder import CacheBuilder, shard_queries
from harness.builder.metering import efficiency_rows
from harness.cache.producers import (
    caption_producer,
    frame_filter_producer,
    query_item,
    rewrite_producer,
    video_item,
    video_query_item,
)
from harness.cache.store import Cache
from harness.config.build import BuildConfig
from harness.core.faults import FAULT_ENV
from harness.core.registries import REWRITERS
from harness.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
R, G, B, Y = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
ROWS = [
    {"qid": 1, "vid": "vidA", "query": "A person picking up a pencil from the desk", "duration": 12},
    {"qid": 2, "vid": "vidA", "query": "a red scene turns blue", "duration": 12},
    {"qid": 3, "vid": "vidB", "query": "A yellow screen", "duration": 8},
    {"qid": 4, "vid": "vidMissing", "query": "a video nobody downloaded", "duration": 10},
    {"qid": 5, "vid": "vidBroken", "query": "a broken video file", "duration": 10},
]
FRAMES = {"vidA": 6, "vidB": 4}
PAIRS = (1, 2)
# `cpu` in CI; GRANALIGN_TEST_DEVICE=cuda runs the same builds on a GPU machine
DEVICE = os.environ.get("GRANALIGN_TEST_DEVICE", "cpu")


@dataclass(frozen=True)
class World:
    data_root: Path
    videos: Path
    models: tiny.TinyModels


@dataclass(frozen=True)
class Run:
    cache: Path
    rc: int
    out: str
    err: str


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.getbasetemp()
    models = tiny.build_tiny_models(base / "granalign-tiny-models")
    root = base / "granalign-build-world"
    if not (root / "DONE").is_file():
        (root / "data" / "qvhighlights").mkdir(parents=True, exist_ok=True)
        rows = [{**r, "relevant_windows": [[0, 2]]} for r in ROWS]
        (root / "data" / "qvhighlights" / "highlight_val_release.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tiny.make_video(root / "videos" / "vidA.mp4", [R, R, G, G, B, B])
        tiny.make_video(root / "videos" / "vidB.mkv", [Y, B, G, R])
        (root / "videos" / "vidBroken.mp4").write_bytes(b"this is not a video" * 64)
        (root / "DONE").write_text("ok\n")
    return World(root / "data", root / "videos", models)


def build_args(w: World, cache: Path, *extra: str) -> list[str]:
    m = w.models
    return [
        "cache", "build", "--cache", str(cache), "--dataset", "qvhighlights:val",
        "--data-root", str(w.data_root), "--videos", str(w.videos),
        "--rewriter-model", str(m.llama), "--pairs", ",".join(map(str, PAIRS)),
        "--frame-filter-model", m.clip_spec, "--caption-model", str(m.qwen_vl),
        "--device", DEVICE, "--batch-size", "2",
        # batches of several queries (rewriter) and of mixed prompts (vidA's two queries'
        # aware captions): a padded batch can flip a near-tie argmax, so sharded and
        # resumed builds agree only because their batches are the same
        "--opt", "rewriter.batch_size=3", "--opt", "captioner.batch_size=3",
        "--opt", "rewriter.max_new_tokens=6",
        "--opt", "rewriter.attempts=2", "--opt", "captioner.max_new_tokens=4", "--no-progress",
        *extra,
    ]


def run_main(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(args)
    return rc, out.getvalue(), err.getvalue()


def entries(cache: Path) -> dict[str, tuple[str, str, str, str]]:
    """key -> (stage, value, status, meta) of every text entry."""
    with contextlib.closing(sqlite3.connect(cache / "cache.sqlite")) as con:
        return {k: (s, v, st, m) for k, s, v, st, m in
                con.execute("SELECT key, stage, value, status, meta FROM entries")}


def by_stage(e: dict[str, tuple[str, str, str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for stage, *_ in e.values():
        out[stage] = out.get(stage, 0) + 1
    return out


@pytest.fixture(scope="module")
def reference(world: World, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted, unsharded build of every stage (the comparison point)."""
    cache = tmp_path_factory.mktemp("reference") / "cache"
    rc, out, err = run_main(build_args(world, cache, "--bench"))
    return Run(cache, rc, out, err)


def producers(w: World) -> dict[str, object]:
    m = w.models
    ff = frame_filter_producer("clip-vit-b32", m.clip_spec)
    return {
        "rewrite": {p: rewrite_producer("hf-causal-lm", str(m.llama), p) for p in PAIRS},
        "frame_filter": ff,
        "agnostic": caption_producer("qwen2.5-vl", "agnostic", str(m.qwen_vl)),
        "aware": caption_producer("qwen2.5-vl", "aware", str(m.qwen_vl), frame_filter=ff),
    }


def test_build_every_stage_through_cli(world: World, reference: Run) -> None:
    assert reference.rc == 0, reference.err
    ds = load_dataset("qvhighlights:val", world.data_root)
    cache = Cache(reference.cache, readonly=True)
    p = producers(world)
    # rewrites: every query text and pair, keyed exactly as runs read them
    for pair in PAIRS:
        for q in ds.queries:
            e = cache.get(p["rewrite"][pair], query_item(q))
            assert e is not None, (pair, q.query)
            assert set(e.value) == {"qs", "qd"}
            # 6 random tokens never hold 5 rewrites: retried, then stored as failed with raw text
            assert e.status == "failed" and e.meta["attempts"] == {"qs": 2, "qd": 2}
            assert len(e.meta["raw"]["qs"]) == 2 and "expected 5 rewrites" in e.meta["error"]["qd"]
    for q in ds.queries:
        scores = cache.get(p["frame_filter"], video_query_item(ds.family, q))
        aware = cache.get(p["aware"], video_query_item(ds.family, q))
        agnostic = cache.get(p["agnostic"], video_item(ds.family, q.vid))
        if q.vid not in FRAMES:  # missing / undecodable: nothing written
            assert scores is None and aware is None and agnostic is None
            continue
        n = FRAMES[q.vid]
        assert n == q.n_clips
        assert scores.status == "ok" and len(scores.value) == n
        assert all(isinstance(v, float) and -1 <= v <= 1 for v in scores.value)
        assert len(agnostic.value) == n and all(isinstance(c, str) for c in agnostic.value)
        assert aware.value["frames"] == candidate_frames(scores.value, 30)
        assert len(aware.value["frames"]) == 2 and len(aware.value["captions"]) == 2
        assert "entities:" in aware.meta["prompt"]
    counts = by_stage(entries(reference.cache))
    assert counts == {"variants": 5 * len(PAIRS), "frame_scores": 3, "captions_agnostic": 2,
                      "captions_aware": 3}
    # the frame store holds the decoded videos
    assert sorted(f.name for f in (reference.cache / "frames").rglob("*.zip")) == ["vidA.zip", "vidB.zip"]
    # missing and undecodable videos are reported by id, and the rest went on
    text = reference.out + reference.err
    assert "vidMissing: missing: no vidMissing.{mp4/mkv/webm/avi}" in text
    assert "vidBroken: undecodable by decord" in text and "undecodable by PyAV" in text
    assert "2 video(s) skipped" in reference.out


def test_efficiency_rows_and_bench(reference: Run, capsys: pytest.CaptureFixture[str]) -> None:
    rows = efficiency_rows(Cache(reference.cache, readonly=True))
    stages = [r["stage"] for r in rows]
    assert stages == ["frames", "variants", "frame_scores", "captions_agnostic", "captions_aware", "embeddings", "total"]
    by = {r["stage"]: r for r in rows}
    assert by["variants"]["items"] == 10 and by["frame_scores"]["items"] == 3
    assert by["captions_agnostic"]["queries"] == 3  # 2 videos carry 3 queries
    assert not by["captions_agnostic"]["online"] and by["captions_aware"]["online"]
    for r in rows[1:-2]:
        assert r["s_per_query"] > 0 and r["peak_mem_gb"] > 0
        assert r["device"] == "cpu" if r["stage"] == "frames" else r["device"].startswith(DEVICE)
    assert by["embeddings"]["wall_s"] > 0  # embed_dataset records time, not memory
    online = [by[s]["s_per_query"] for s in ("variants", "frame_scores", "captions_aware")]
    assert by["total"]["s_per_query"] == pytest.approx(sum(online))
    assert "total" in reference.out  # --bench printed the table
    assert cli.main(["bench", "--cache", str(reference.cache), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in printed] == stages


def test_rerun_does_only_what_is_missing(world: World, reference: Run, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    shutil.copytree(reference.cache, cache_dir)
    before = entries(cache_dir)
    timings = len(Cache(cache_dir).timings())
    config = BuildConfig(
        dataset="qvhighlights:val", data_root=str(world.data_root), videos=str(world.videos),
        rewriter_model=str(world.models.llama), pairs=PAIRS, frame_filter_model=world.models.clip_spec,
        caption_model=str(world.models.qwen_vl), device=DEVICE, progress=False,
    )
    builder = CacheBuilder(config, Cache(cache_dir), log=io.StringIO())
    report = builder.run()
    assert [s.done for s in report.stages] == [0, 0, 0, 0, 0, 0]
    assert all(getattr(b, "_model", None) is None for b in builder._backends.values())  # nothing loaded
    assert entries(cache_dir) == before and len(Cache(cache_dir).timings()) == timings


def test_crash_midway_then_rerun_equals_uninterrupted(world: World, reference: Run, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = {**os.environ, FAULT_ENV: "build:commit#frame_scores@2|kill"}  # vidA's 2 queries commit, vidB's dies
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *build_args(world, cache_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    crashed = by_stage(entries(cache_dir))
    assert crashed == {"variants": 10, "frame_scores": 2}
    rc, out, err = run_main(build_args(world, cache_dir))
    assert rc == 0, err
    assert entries(cache_dir) == entries(reference.cache)
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:6]}
    assert " 0 done" in lines["variants"] and " 1 done" in lines["frame_scores"]


def test_two_shards_equal_one_unsharded_build(world: World, reference: Run, tmp_path: Path) -> None:
    ds = load_dataset("qvhighlights:val", world.data_root)
    assert {q.vid for q in shard_queries(ds, 0, 2)} == {"vidA"}  # both shards have real work
    assert {q.vid for q in shard_queries(ds, 1, 2)} == {"vidB", "vidMissing", "vidBroken"}
    assert all(shard_of(v, 1) == 0 for v in FRAMES)
    cache_dir = tmp_path / "cache"
    assert run_main(build_args(world, cache_dir, "--shard", "0/2"))[0] == 0
    first = entries(cache_dir)
    assert by_stage(first) == {"variants": 4, "frame_scores": 2, "captions_agnostic": 1, "captions_aware": 2}
    assert run_main(build_args(world, cache_dir, "--shard", "1/2"))[0] == 0
    assert entries(cache_dir) == entries(reference.cache)


def test_caption_text_stand_in_from_stored_frames(world: World, reference: Run, tmp_path: Path) -> None:
    """No videos: the stand-in filter reads cached captions, aware captions read the frame store."""
    cache_dir = tmp_path / "cache"
    shutil.copytree(reference.cache, cache_dir)
    args = [a for a in build_args(world, cache_dir) if a not in ("--videos", str(world.videos))]
    rc, out, err = run_main([*args, "--stages", "frame_scores,captions_aware", "--frame-filter", "caption-text"])
    assert rc == 0, err
    assert "STAND-IN" in out and "no agnostic captions" in out + err
    ds = load_dataset("qvhighlights:val", world.data_root)
    cache = Cache(cache_dir, readonly=True)
    ff = frame_filter_producer("caption-text")
    aware = caption_producer("qwen2.5-vl", "aware", str(world.models.qwen_vl), frame_filter=ff)
    for q in ds.queries:
        e = cache.get(ff, video_query_item(ds.family, q))
        if q.vid not in FRAMES:
            assert e is None
            continue
        assert len(e.value) == FRAMES[q.vid] and "caption-text" in e.meta["stand_in"]
        a = cache.get(aware, video_query_item(ds.family, q))
        assert a.value["frames"] == candidate_frames(e.value, 30)


def test_cli_errors_name_the_problem(world: World, tmp_path: Path) -> None:
    rc, _, err = run_main(build_args(world, tmp_path / "c", "--captioner", "nope", "--stages", "captions_agnostic"))
    assert rc == 2 and "valid names: blip2" in err and "qwen2.5-vl" in err
    rc, _, err = run_main(build_args(world, tmp_path / "c", "--frame-filter", "nope"))
    assert rc == 2 and "valid names: caption-text, clip-vit-b32" in err
    rc, _, err = run_main(build_args(world, tmp_path / "c", "--pairs", "1,9", "--stages", "variants"))
    assert rc == 2 and "unknown instruction pair 9" in err
    args = [a for a in build_args(world, tmp_path / "c") if a not in ("--videos", str(world.videos))]
    rc, _, err = run_main([*args, "--stages", "frames"])
    assert rc == 2 and "needs --videos" in err
    rc, _, err = run_main(build_args(world, tmp_path / "c", "--opt", "bogus.x=1"))
    assert rc == 2 and "unknown option group" in err


def test_build_then_run_reads_every_pairing(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build of every stage (embeddings included) feeds `granalign run` for every pairing,
    `Cq`, `qs` and `qd` included, with no other step. A random LLM never writes a parseable
    list, so its answer is replaced (the rest of the rewriter's code path runs as is)."""
    from harness.builder.backends.rewrite import HFCausalLMRewriter
    from harness.method.scoring import PAIRINGS

    def answer(self: object, instructions: list[str], sample: bool = False, seed: int = 0) -> list[str]:
        out = []
        for text in instructions:
            kind = "simple" if "simplif" in text.lower() or "simple" in text.lower() else "detailed"
            out.append(json.dumps([f"{kind} rewrite number {k} of the moment" for k in range(5)]))
        return out

    monkeypatch.setattr(HFCausalLMRewriter, "generate", answer)
    cache = tmp_path / "cache"
    rc, out, err = run_main(build_args(world, cache, "--pairs", "1"))
    assert rc == 0, err
    m = world.models
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"base: {REPO / 'experiments' / 'granalign_qvh.yaml'}\n"
        f"caption_model: {m.qwen_vl}\nframe_filter_model: {json.dumps(m.clip_spec)}\n"
        f"rewriter_model: {m.llama}\nlimit: 3\n",  # the three queries whose videos decode
        encoding="utf-8",
    )
    for pairing in [p for p in PAIRINGS.names() if not p.startswith("qp")]:  # qp: imported only
        rc, out, err = run_main(["run", str(config), "--set", f"pairing={pairing}", "--cache", str(cache),
                                 "--data-root", str(world.data_root), "--out", str(tmp_path / pairing)])
        assert rc == 0, f"{pairing}: {err}"
        rows = [json.loads(x) for x in (tmp_path / pairing / "predictions.jsonl").read_text().splitlines()]
        assert [r["qid"] for r in rows] == [1, 2, 3]
        assert all(r["pred_relevant_windows"] for r in rows)


def test_two_shards_built_apart_merge_into_one_build(world: World, reference: Run, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards built in separate folders (separate machines) join with `granalign cache merge`:
    the same content fingerprint as one unsharded build; an interrupted merge rerun ends the
    same; the same key with different content is an error naming both caches."""
    from harness.cache.merge import content_fingerprint

    a, b = tmp_path / "shard0", tmp_path / "shard1"
    assert run_main(build_args(world, a, "--shard", "0/2"))[0] == 0
    assert run_main(build_args(world, b, "--shard", "1/2"))[0] == 0
    want = content_fingerprint(Cache(reference.cache, readonly=True))
    assert content_fingerprint(Cache(a, readonly=True)) != want

    merged = tmp_path / "merged"
    rc, out, err = run_main(["cache", "merge", str(a), str(b), "--into", str(merged), "--no-progress"])
    assert rc == 0, err
    assert f"content fingerprint: {want[:16]}" in out
    assert content_fingerprint(Cache(merged, readonly=True)) == want
    assert entries(merged) == entries(reference.cache)

    # interrupted after a few entries, then run again: the same cache
    broken = tmp_path / "interrupted"
    monkeypatch.setenv(FAULT_ENV, "merge:entry@5")
    with pytest.raises(RuntimeError, match="injected fault at merge:entry"):
        run_main(["cache", "merge", str(a), str(b), "--into", str(broken), "--no-progress"])
    monkeypatch.delenv(FAULT_ENV)
    assert content_fingerprint(Cache(broken, readonly=True)) not in (want,)
    assert run_main(["cache", "merge", str(a), str(b), "--into", str(broken), "--no-progress"])[0] == 0
    assert content_fingerprint(Cache(broken, readonly=True)) == want

    # a conflict: the same key with another value in a third cache
    other = tmp_path / "other"
    shutil.copytree(a, other)
    with contextlib.closing(sqlite3.connect(other / "cache.sqlite")) as con:
        key = con.execute("SELECT key FROM entries WHERE stage = 'variants' LIMIT 1").fetchone()[0]
        con.execute("UPDATE entries SET value = '{}', value_hash = 'x' WHERE key = ?", (key,))
        con.commit()
    rc, _, err = run_main(["cache", "merge", str(other), "--into", str(merged), "--no-progress"])
    assert rc == 2 and f"cache entry {key} differs between {other} and {merged}" in err


# -- one model at a time, and batches that do not depend on the shard -------------------------
STAGE_OWNER = {"variants": "rewriter", "frame_scores": "frame_filter", "captions_agnostic": "captioner",
               "captions_aware": "captioner"}


def test_each_stage_meter_starts_with_no_other_model(reference: Run) -> None:
    """Peak memory (Table 4) resets to what is allocated, so the previous stage's model must
    be gone when a stage's meter starts: the records say what was resident then."""
    records = [r for r in Cache(reference.cache, readonly=True).timings() if r["stage"] in STAGE_OWNER]
    assert {r["stage"] for r in records} == set(STAGE_OWNER)
    for r in records:
        meta = json.loads(r["meta"])
        resident = set(meta["resident_at_start"])
        assert resident <= {STAGE_OWNER[r["stage"]]}, (r["stage"], resident)
        assert meta["leaked_at_start"] == []  # unloaded models were really freed
        if r["stage"] in ("variants", "frame_scores") and meta.get("pair", 1) == 1:
            assert resident == set()  # the build's first model, and the one after the rewriter
        assert all(b > 0 for b in meta["model_bytes"].values())
    by_stage = {r["stage"]: json.loads(r["meta"]) for r in records}
    # the captioner loads once for both caption stages: aware captions load nothing
    assert list(by_stage["captions_agnostic"]["model_bytes"]) == ["qwen2.5-vl"]
    assert by_stage["captions_aware"]["model_bytes"] == {}
    assert set(by_stage["captions_aware"]["resident_at_start"]) == {"captioner"}


def test_a_finished_build_holds_no_model(world: World, reference: Run, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    shutil.copytree(reference.cache, cache_dir)
    with contextlib.closing(sqlite3.connect(cache_dir / "cache.sqlite")) as con:
        con.execute("DELETE FROM entries WHERE stage IN ('frame_scores', 'captions_aware')")
        con.commit()
    config = BuildConfig(
        dataset="qvhighlights:val", data_root=str(world.data_root), videos=str(world.videos),
        stages=("frame_scores", "captions_aware"), frame_filter_model=world.models.clip_spec,
        caption_model=str(world.models.qwen_vl), device=DEVICE, progress=False,
    )
    builder = CacheBuilder(config, Cache(cache_dir), log=io.StringIO())
    seen: list[tuple[str, dict[str, int]]] = []
    for stage in ("frame_scores", "captions_aware"):
        original = getattr(builder, f"stage_{stage}")

        def spy(original: object = original, stage: str = stage) -> object:
            seen.append((stage, builder.loaded_models()))
            return original()  # type: ignore[operator]

        setattr(builder, f"stage_{stage}", spy)
    report = builder.run()
    assert [s.done for s in report.stages] == [3, 3]
    assert seen == [("frame_scores", {}), ("captions_aware", {})]  # CLIP gone before Qwen
    assert builder.loaded_models() == {}
    assert all(not b.loaded for b in builder._backends.values())


def test_batches_do_not_depend_on_the_shard(data_root: Path, tmp_path: Path) -> None:
    """On the real QVHighlights val queries: the rewriter batches each shard runs are batches
    of the unsharded plan, and every shard count runs the same batches in all; a query text
    asked in two shards' videos is run in its owner's batch by both (4 such texts in val)."""
    def builder(i: int, n: int) -> CacheBuilder:
        cfg = BuildConfig(dataset="qvhighlights:val", data_root=str(data_root), stages=("variants",),
                          shard=(i, n), progress=False)
        return CacheBuilder(cfg, Cache(tmp_path / "unused"), log=io.StringIO())

    from harness.builder.batching import batches_to_run

    whole = builder(0, 1)
    plan = [tuple(b) for b in whole.rewrite_plan(8)]
    assert sum(len(b) for b in plan) == len(whole.texts) == 1546
    assert len({t for b in plan for t in b}) == 1546  # each text in one batch
    for n in (2, 3, 7, 64):
        ran: set[tuple[str, ...]] = set()
        for i in range(n):
            b = builder(i, n)
            runs = [tuple(x) for x in batches_to_run(b.rewrite_plan(8), {q.query for q in b.texts})]
            assert set(runs) <= set(plan)
            assert {t for x in runs for t in x} >= {q.query for q in b.texts}
            ran |= set(runs)
        assert ran == set(plan), n
    # the old rule (consecutive queries of the shard) would batch differently per shard
    shard0 = builder(0, 2).texts
    old = [tuple(q.query for q in shard0[i : i + 8]) for i in range(0, len(shard0), 8)]
    assert not set(old) <= set(plan)


class BatchEcho(Rewriter):
    """A rewriter whose answer is its batch: a stand-in for the half-precision effect (a
    sample's output moving with its batch mates) that makes any batch change visible."""

    name = "test-batch-echo"
    fail_after: int | None = None  # raise on this call (a crash mid-stage)
    calls = 0

    def __init__(self, batch_size: int = 3, **_: object) -> None:
        self._batch_size = batch_size
        self.model_id = "batch-echo"

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def rewrite(self, queries: list[str], pair: int, cache: object = None) -> list[RewriteResult]:
        BatchEcho.calls += 1
        if BatchEcho.fail_after is not None and BatchEcho.calls > BatchEcho.fail_after:
            raise KeyboardInterrupt("killed mid-stage")
        return [RewriteResult(q, {"qs": sorted(queries), "qd": [q]}, "ok") for q in queries]


@pytest.fixture()
def batch_echo() -> object:
    """`test-batch-echo` registered for one test only (not left in the global registry)."""
    REWRITERS.register("test-batch-echo")(BatchEcho)
    yield BatchEcho
    REWRITERS._items.pop("test-batch-echo", None)


def _echo_build(world: World, cache: Path, *extra: str) -> int:
    rc, _, err = run_main(["cache", "build", "--cache", str(cache), "--dataset", "qvhighlights:val",
                           "--data-root", str(world.data_root), "--stages", "variants",
                           "--rewriter", "test-batch-echo", "--rewriter-model", "batch-echo",
                           "--pairs", "1", "--no-progress", *extra])
    assert rc == 0, err
    return rc


def test_shards_and_resumed_builds_run_the_same_batches(world: World, tmp_path: Path, batch_echo: object,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BatchEcho, "fail_after", None)
    _echo_build(world, tmp_path / "whole")
    want = entries(tmp_path / "whole")
    assert len(want) == 5
    for n in (2, 3):
        for i in range(n):
            _echo_build(world, tmp_path / f"shards{n}", "--shard", f"{i}/{n}")
        assert entries(tmp_path / f"shards{n}") == want, n
    # killed after the first batch, then resumed: the same batches as the uninterrupted build
    monkeypatch.setattr(BatchEcho, "calls", 0)
    monkeypatch.setattr(BatchEcho, "fail_after", 1)
    rc, _, _ = run_main(["cache", "build", "--cache", str(tmp_path / "resumed"), "--dataset",
                         "qvhighlights:val", "--data-root", str(world.data_root), "--stages", "variants",
                         "--rewriter", "test-batch-echo", "--rewriter-model", "batch-echo", "--pairs", "1",
                         "--no-progress"])
    assert rc == 130  # the CLI's exit status for an interrupt
    assert 0 < len(entries(tmp_path / "resumed")) < 5
    monkeypatch.setattr(BatchEcho, "fail_after", None)
    _echo_build(world, tmp_path / "resumed")
    assert entries(tmp_path / "resumed") == want


def test_a_limited_build_takes_whole_videos(world: World, tmp_path: Path) -> None:
    """`--limit 1` keeps every query of the first query's video (vidA has two), and plans the
    rewriter's batches over the whole dataset: a limited build and a later full build into
    the same cache run every sample in the same batch."""
    cfg = BuildConfig(dataset="qvhighlights:val", data_root=str(world.data_root), stages=("variants",),
                      limit=1, progress=False)
    b = CacheBuilder(cfg, Cache(tmp_path / "unused"), log=io.StringIO())
    assert [q.qid for q in b.queries] == [1, 2]
    full = CacheBuilder(dataclasses.replace(cfg, limit=None), Cache(tmp_path / "unused"), log=io.StringIO())
    assert b.rewrite_plan(3) == full.rewrite_plan(3)
