"""The vectorised trial against an independent per-query implementation of the method and
of the official evaluator (tests/reference_impl.py, which shares no code with harness/):
the same windows and scores, and the same metrics, on random inputs (every recipe,
normalisation, pruning rule, span scorer, Cq fallback), on the demo (every pairing) and on
real QVHighlights val queries. Also: batched NMS against the per-query greedy loop, and a
trial's metrics from arrays against the harness's evaluator on the rows it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cache.store import Cache
from harness.config import ExperimentConfig, load_config
from harness.core.query import Query
from harness.core.registries import PAIRINGS
from harness.eval import evaluate
from harness.method.kinds import SourceSpec
from harness.method.proposals import batched_nms
from harness.method.recipes import predict
from harness.method.sources import Prepared
from harness.runner.trial import InputPool, trial
from tests.reference_impl import reference_metrics, reference_rows, rows_close, temporal_nms

REPO = Path(__file__).resolve().parents[1]


def same(a: dict, b: dict) -> bool:
    """Equal metrics, NaN included (a split with no query is NaN on both sides)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("seed", range(6))
def test_batched_nms_equals_the_per_query_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_queries, n_spans = 60, 900
    owner = rng.integers(0, n_queries, n_spans)
    first = rng.integers(0, 40, n_spans)
    end = first + rng.integers(0, 12, n_spans)  # zero-length spans included
    score = np.round(rng.random(n_spans), 2)  # ties in score, as rounded curves give
    for tau, keep in ((0.5, 10), (0.9, 3), (1.0, 50), (0.0, 10)):
        idx, valid = batched_nms(owner, first, end, score, n_queries, tau, keep)
        for q in range(n_queries):
            mine = np.flatnonzero(owner == q)
            order = np.lexsort((-score[mine], np.zeros(mine.size)))
            mine = mine[order]
            ref = mine[temporal_nms(np.stack([first[mine], end[mine]], 1).astype(float), score[mine], tau, keep)]
            assert idx[q][valid[q]].tolist() == ref.tolist(), (seed, tau, keep, q)


def _random_prepared(seed: int, n: int = 120) -> Prepared:
    """Random float32 similarities for every pair kind, aware captions on each video's top
    30 % frames (ranked at random), GT windows and saliency labels."""
    rng = np.random.default_rng(seed)
    n_frames = rng.integers(8, 75, n)
    t = int(n_frames.max())
    queries = []
    for i in range(n):
        duration = float(n_frames[i] * 2 - rng.integers(0, 2))
        k = int(rng.integers(1, 4))
        starts = np.sort(rng.uniform(0, duration - 2, k))
        windows = tuple((float(s), float(min(duration, s + rng.uniform(2, 70)))) for s in starts)
        clips = rng.choice(int(duration // 2), size=min(6, int(duration // 2)), replace=False)
        saliency = {int(c): tuple(int(x) for x in rng.integers(0, 5, 3)) for c in clips}
        queries.append(Query(i, f"v{i}", f"q{i}", duration, windows, saliency))
    pad = np.arange(t)[None, :] >= n_frames[:, None]
    aware_rank = np.full((n, t), np.iinfo(np.int32).max, dtype=np.int64)
    for i in range(n):
        n_aware = int(np.ceil(n_frames[i] * 0.3))
        aware_rank[i, rng.permutation(int(n_frames[i]))[:n_aware]] = np.arange(n_aware)
    sims = {}
    for pair, m in ((("q", "Ca"), 1), (("qp", "Ca"), 5), (("qs", "Ca"), 5), (("qd", "Ca"), 5),
                    (("qs", "Cq"), 5), (("qd", "Cq"), 5)):
        a = rng.normal(0.3, 0.15, (n, m, t)).astype(np.float32)
        a[np.broadcast_to(pad[:, None, :], a.shape)] = np.nan
        if pair[1] == "Cq":
            a[np.broadcast_to((aware_rank >= 10**6)[:, None, :], a.shape)] = np.nan
        sims[pair] = a
    spec = SourceSpec("demo:val", "qwen2.5-vl", None, "clip-vit-b32", None, "hf-causal-lm", "x", 1, ("e",))
    return Prepared("demo:val", tuple(queries), n_frames, sims, aware_rank, "fp", spec)


CONFIGS = [
    {"pairing": "q-Ca"},
    {"pairing": "q-Ca+qp-Ca", "m": 5, "tau": 0.7, "gap": 2},
    {"pairing": "qs-Ca+qd-Ca", "m": 3, "prune": "spans", "n": 30, "proposals_from": "mean"},
    {"pairing": "qs-Ca", "m": 2, "prune": "merge", "normalisation": "shift", "bins": 7, "top_k": 3},
    {"recipe": "vtg-gpt", "pairing": "q-Ca+qp-Ca", "m": 5, "lam": 0.5, "tau": 0.95, "span_score": "selected"},
    {"pairing": "qd-Ca", "m": 4, "max_windows": 3, "normalisation": "raw", "span_score": "selected"},
    {"pairing": "granalign", "m": 3, "K": 20},
    {"pairing": "qs-Cq+qd-Cq", "m": 2, "K": 30, "cq_fallback": "zero", "gap": 0, "n": 40},
    {"recipe": "vtg-gpt", "pairing": "q-Ca+qs-Cq", "m": 3, "K": 10, "tau": 0.5},
]


def check_against_the_reference(prep: Prepared, cfg: ExperimentConfig) -> None:
    """The harness's rows equal the reference method's; its metrics (computed from arrays)
    equal the reference evaluator's on those rows, and its own evaluator's on the file."""
    ours = predict(prep, cfg).rows(prep.queries)
    problems = rows_close(ours, reference_rows(prep, cfg))
    assert not problems, problems[:5]
    metrics = trial(prep, cfg)
    assert metrics["brief"] == reference_metrics(prep.queries, ours)
    assert same(metrics, evaluate(cfg.dataset, list(prep.queries), ours))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("overrides", CONFIGS)
def test_fast_trial_equals_the_reference_on_random_inputs(seed: int, overrides: dict) -> None:
    check_against_the_reference(_random_prepared(seed), ExperimentConfig(dataset="demo:val", **overrides))


@pytest.mark.parametrize("pairing", PAIRINGS.names())
def test_fast_trial_equals_the_reference_on_the_demo(demo_cache: Path, pairing: str) -> None:
    cfg = load_config(REPO / "experiments" / "demo.yaml", {"pairing": pairing})
    check_against_the_reference(InputPool(Cache(demo_cache)).get(cfg), cfg)


@pytest.mark.parametrize("config, overrides", [
    ("granalign_qvh_minigptv2.yaml", {}),
    ("granalign_qvh_minigptv2.yaml", {"pairing": "q-Ca+qp-Ca", "m": 5}),
    ("vtg_gpt_qvh.yaml", {}),
])
def test_fast_trial_equals_the_reference_on_real_queries(real_cache: Cache, data_root: Path, config: str,
                                                          overrides: dict) -> None:
    cfg = load_config(REPO / "experiments" / config, {**overrides, "limit": 40})
    prep = InputPool(real_cache, data_root).get(cfg)
    check_against_the_reference(prep, cfg)
    full = trial(prep, cfg)
    sweep = trial(prep, cfg, highlights=False)  # a sweep's trial: the same MR metrics, no HL
    assert {k: v for k, v in full["brief"].items() if not k.startswith("HL")} == sweep["brief"]
