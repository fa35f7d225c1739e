"""The vectorised trial equals the per-query reference (tests/reference_impl.py) exactly:
batched NMS against the per-query greedy loop, and a trial's metrics computed from arrays
against the official evaluator run on the rows the reference code writes, on random
inputs, on the demo (every pairing) and on real QVHighlights val queries."""

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
from tests.reference_impl import reference_rows, temporal_nms

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
    sims = {}
    for pair, m in ((("q", "Ca"), 1), (("qp", "Ca"), 5), (("qs", "Ca"), 5), (("qd", "Ca"), 5)):
        a = rng.normal(0.3, 0.15, (n, m, t)).astype(np.float32)
        a[np.broadcast_to(np.arange(t)[None, None, :] >= n_frames[:, None, None], a.shape)] = np.nan
        sims[pair] = a
    spec = SourceSpec("demo:val", "qwen2.5-vl", None, "clip-vit-b32", None, "hf-causal-lm", "x", 1, "e")
    return Prepared("demo:val", tuple(queries), n_frames, sims, None, "fp", spec)


CONFIGS = [
    {"pairing": "q-Ca"},
    {"pairing": "q-Ca+qp-Ca", "m": 5, "tau": 0.7, "gap": 2},
    {"pairing": "qs-Ca+qd-Ca", "m": 3, "prune": "spans", "n": 30, "proposals_from": "mean"},
    {"pairing": "qs-Ca", "m": 2, "prune": "merge", "normalisation": "shift", "bins": 7, "top_k": 3},
    {"recipe": "vtg-gpt", "pairing": "q-Ca+qp-Ca", "m": 5, "lam": 0.5, "tau": 0.95, "span_score": "selected"},
    {"pairing": "qd-Ca", "m": 4, "max_windows": 3, "normalisation": "raw", "span_score": "selected"},
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("overrides", CONFIGS)
def test_fast_trial_equals_the_reference_on_random_inputs(seed: int, overrides: dict) -> None:
    prep = _random_prepared(seed)
    cfg = ExperimentConfig(dataset="demo:val", **overrides)
    ref = reference_rows(prep, cfg)
    assert predict(prep, cfg).rows(prep.queries) == ref
    assert same(trial(prep, cfg), evaluate(cfg.dataset, list(prep.queries), ref))


@pytest.mark.parametrize("pairing", PAIRINGS.names())
def test_fast_trial_equals_the_reference_on_the_demo(demo_cache: Path, pairing: str) -> None:
    cfg = load_config(REPO / "experiments" / "demo.yaml", {"pairing": pairing})
    prep = InputPool(Cache(demo_cache)).get(cfg)
    ref = reference_rows(prep, cfg)
    assert same(trial(prep, cfg), evaluate(cfg.dataset, list(prep.queries), ref))


@pytest.mark.parametrize("config, overrides", [
    ("granalign_qvh_minigptv2.yaml", {}),
    ("granalign_qvh_minigptv2.yaml", {"pairing": "q-Ca+qp-Ca", "m": 5}),
    ("vtg_gpt_qvh.yaml", {}),
])
def test_fast_trial_equals_the_reference_on_real_queries(real_cache: Cache, data_root: Path, config: str,
                                                          overrides: dict) -> None:
    cfg = load_config(REPO / "experiments" / config, {**overrides, "limit": 40})
    prep = InputPool(real_cache, data_root).get(cfg)
    ref = reference_rows(prep, cfg)
    assert predict(prep, cfg).rows(prep.queries) == ref
    full = trial(prep, cfg)
    assert same(full, evaluate(cfg.dataset, list(prep.queries), ref))
    sweep = trial(prep, cfg, highlights=False)  # a sweep's trial: the same MR metrics, no HL
    assert {k: v for k, v in full["brief"].items() if not k.startswith("HL")} == sweep["brief"]
