"""Hand-worked cases for Eq. 1 frame scores, pairings, normalisations and recipes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from harness.config import ExperimentConfig
from harness.core.query import Query
from harness.core.registry import RegistryError
from harness.method.kinds import SourceSpec
from harness.method.recipes import Predictions, predict
from harness.method.scoring import (
    candidate_mask,
    frame_scores,
    minmax,
    pair_scores,
    resolve_pairing,
    variant_curves,
)
from harness.method.sources import Prepared

SPEC = SourceSpec("toy:val", "qwen2.5-vl", None, "clip-vit-b32", None, "hf-causal-lm", "x", 1, ("e",))


def per_query(p: Predictions) -> list[SimpleNamespace]:
    """Each query's windows and scores (best first) and saliency, cut from the arrays."""
    out = []
    for i in range(len(p)):
        k = int(p.valid[i].sum())
        out.append(SimpleNamespace(windows=p.windows[i, :k], scores=p.scores[i, :k],
                                   saliency=p.saliency[i, : int(p.n_frames[i])]))
    return out



def prepared(sims: dict, durations: list[float], n_frames: list[int], aware_rank=None) -> Prepared:
    queries = tuple(
        Query(i, f"v{i}", f"query {i}", d, ((0.0, 2.0),)) for i, d in enumerate(durations)
    )
    return Prepared("toy:val", queries, np.array(n_frames), sims, aware_rank, "fp", SPEC)


def test_pairing_names_and_lists():
    assert resolve_pairing("granalign") == (("qs", "Ca"), ("qd", "Cq"))
    assert resolve_pairing("qs-Cq+qd-Ca") == (("qs", "Cq"), ("qd", "Ca"))
    assert resolve_pairing([["q", "Ca"], ["qp", "Ca"]]) == (("q", "Ca"), ("qp", "Ca"))
    with pytest.raises(RegistryError, match="valid names: granalign"):
        resolve_pairing("qx-Ca")
    with pytest.raises(ValueError, match="query kinds: q, qs, qd, qp"):
        resolve_pairing([["q", "Cz"]])


def test_minmax_per_variant_and_constant_curve():
    sims = np.array([[[0.2, 0.4, 0.6, np.nan], [0.5, 0.5, 0.5, np.nan]]])
    out = minmax(sims)
    np.testing.assert_allclose(out[0, 0, :3], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(out[0, 1, :3], [1.0, 1.0, 1.0])  # no information: all ones
    assert np.isnan(out[0, :, 3]).all()  # padding stays padding


def test_candidates_and_cq_fallback():
    # 10 frames, aware captions on frames 7, 2, 5 (rank 0, 1, 2); K=20% -> 2 candidates
    rank = np.full((1, 10), 10**9)
    rank[0, [7, 2, 5]] = [0, 1, 2]
    cand = candidate_mask(rank, np.array([10]), K=20)
    assert np.flatnonzero(cand[0]).tolist() == [2, 7]
    ca = np.linspace(0.0, 0.9, 10)[None, None, :]
    cq = np.full((1, 1, 10), np.nan)
    cq[0, 0, [7, 2, 5]] = [0.95, 0.1, 0.99]
    got = pair_scores("Cq", ca, cq, cand, lambda x: x, "ca")
    want = ca.copy()
    want[0, 0, 7], want[0, 0, 2] = 0.95, 0.1  # frame 5 is rank 2: outside K=20%
    np.testing.assert_allclose(got, want)
    zero = pair_scores("Cq", ca, cq, cand, lambda x: x, "zero")
    assert zero[0, 0, 7] == 0.95 and zero[0, 0, 2] == 0.1 and zero[0, 0, 5] == 0.0


def test_eq1_mean_over_pairs_and_variants():
    g1 = np.array([[[0.0, 1.0], [1.0, 0.0]]])  # qs: two variants
    g2 = np.array([[[0.5, 0.5], [0.0, 1.0]]])  # qd: two variants
    variants = variant_curves([g1, g2])
    np.testing.assert_allclose(variants, [[[0.25, 0.75], [0.5, 0.5]]])
    # S_i = 1/(2m) sum_j [g(qs_j) + g(qd_j)] = (0 + 1 + .5 + 0) / 4, (1 + 0 + .5 + 1) / 4
    np.testing.assert_allclose(frame_scores(variants), [[0.375, 0.625]])
    # q (one variant) broadcasts against m variants without changing the mean
    q = np.array([[[0.2, 0.8]]])
    np.testing.assert_allclose(frame_scores(variant_curves([q, g1])), [[0.35, 0.65]])


def _cfg(**kw) -> ExperimentConfig:
    return ExperimentConfig(dataset="toy:val", **kw)


def test_predict_windows_in_seconds_clipped_to_duration():
    # one query, 10 frames, the last four frames score high; duration 19 s (not 20)
    sims = np.array([[[0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.9, 0.95, 0.9, 1.0]]])
    prep = prepared({("q", "Ca"): sims}, [19.0], [10])
    (p,) = per_query(predict(prep, _cfg(pairing="q-Ca", top_k=4)))
    # threshold 0.8 after min-max: frames 6..9 -> [12, 20) s, clipped to 19
    np.testing.assert_allclose(p.windows[0], [12.0, 19.0])
    assert p.windows.shape[0] <= 10 and p.saliency.shape == (10,)


def test_predict_one_frame_and_flat_video_give_the_whole_video():
    sims1 = np.array([[[0.3]]])
    (p,) = per_query(predict(prepared({("q", "Ca"): sims1}, [1.5], [1]), _cfg(pairing="q-Ca")))
    np.testing.assert_allclose(p.windows, [[0.0, 1.5]])
    flat = np.full((1, 1, 12), 0.4)
    (p,) = per_query(predict(prepared({("q", "Ca"): flat}, [24.0], [12]), _cfg(pairing="q-Ca")))
    np.testing.assert_allclose(p.windows, [[0.0, 24.0]])


def test_predict_empty_selection_gives_no_window():
    # raw cosine all <= 0 -> clipped to 0 -> nothing above threshold 0
    sims = np.full((1, 1, 6), -0.2)
    (p,) = per_query(predict(prepared({("q", "Ca"): sims}, [12.0], [6]), _cfg(pairing="q-Ca", normalisation="raw")))
    assert p.windows.shape == (0, 2) and p.scores.shape == (0,)


def test_predict_pools_queries_independently_with_padding():
    a = np.full((2, 1, 8), np.nan)
    a[0, 0, :8] = [0, 0, 1, 1, 0, 0, 0, 0]
    a[1, 0, :4] = [1, 0, 0, 0]
    prep = prepared({("q", "Ca"): a}, [16.0, 8.0], [8, 4])
    p0, p1 = per_query(predict(prep, _cfg(pairing="q-Ca", top_k=2)))
    np.testing.assert_allclose(p0.windows[0], [4.0, 8.0])
    np.testing.assert_allclose(p1.windows[0], [0.0, 2.0])
    assert p1.saliency.shape == (4,)


def _vtg_gpt_reference(curves: list[np.ndarray], top_k=8, gap=6, tau=0.95):
    """VTG-GPT's published procedure, written plainly (per curve, then pooled NMS)."""
    spans = []
    for s in curves:
        counts, edges = np.histogram(s, bins=10, range=(0, 1))
        thr = 0.0
        for i in range(9, -1, -1):
            if counts[i:].sum() >= top_k:
                thr = edges[i]
                break
        sel = np.where(s > thr)[0]
        groups = [[sel[0]]]
        for f in sel[1:]:
            if f - groups[-1][-1] <= gap:
                groups[-1].append(f)
            else:
                groups.append([f])
        total = sum(len(g) for g in groups)
        spans += [(min(g), max(g), 0.5 * len(g) / total + 0.5 * s[g].mean()) for g in groups]
    spans.sort(key=lambda x: -x[2])
    keep = []
    while spans:
        best = spans.pop(0)
        keep.append(best)

        def iou(a, b):
            inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
            union = (a[1] - a[0]) + (b[1] - b[0]) - inter
            return inter / union if union else 0

        spans = [x for x in spans if iou(best, x) < tau]
    return [(2 * a, 2 * (b + 1), sc) for a, b, sc in keep]


def test_vtg_gpt_recipe_matches_its_published_procedure():
    rng = np.random.default_rng(3)
    q = rng.random((1, 1, 40)).astype(np.float64)
    qp = rng.random((1, 5, 40)).astype(np.float64)
    prep = prepared({("q", "Ca"): q, ("qp", "Ca"): qp}, [80.0], [40])
    cfg = _cfg(recipe="vtg-gpt", pairing="q-Ca+qp-Ca", m=5, lam=0.5, tau=0.95, max_windows=1000)
    (p,) = per_query(predict(prep, cfg))
    curves = [minmax(q)[0, 0]] + [minmax(qp)[0, j] for j in range(5)]
    want = _vtg_gpt_reference(curves)
    got = [(s, e, sc) for (s, e), sc in zip(p.windows, p.scores, strict=True)]
    assert len(got) == len(want)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p.saliency, np.mean(curves, axis=0))


def test_proposals_come_from_every_variant_curve_and_the_mean():
    """Two rewrites peak apart: S^1 at frames 0-1, S^2 at 6-7. The mean curve S is 0.5 on
    both peaks, its threshold falls to 0 (top_k 5) and gap 6 merges them into one span
    [0,7] of mean 0.25. METHOD.md pools the spans of S^1, S^2 and S: [0,1] and [6,7] score
    0.7 * 1 + 0.3 * 2 / 2 = 1.0 each (a tie: the earlier curve first), [0,7] 0.7 * 0.25 +
    0.3 * 8 / 8 = 0.475. From S alone only [0,7] is left."""
    sims = np.zeros((1, 2, 8))
    sims[0, 0, :2] = 1.0
    sims[0, 1, 6:] = 1.0
    prep = prepared({("qs", "Ca"): sims}, [16.0], [8])
    kw = {"pairing": "qs-Ca", "m": 2, "normalisation": "raw", "top_k": 5, "gap": 6, "n": 20, "lam": 0.3,
          "tau": 0.9}
    (p,) = per_query(predict(prep, _cfg(**kw)))
    np.testing.assert_allclose(p.windows, [[0.0, 4.0], [12.0, 16.0], [0.0, 16.0]])
    np.testing.assert_allclose(p.scores, [1.0, 1.0, 0.475])
    np.testing.assert_allclose(p.saliency, [0.5, 0.5, 0, 0, 0, 0, 0.5, 0.5])
    (p,) = per_query(predict(prep, _cfg(**kw, proposals_from="mean")))
    np.testing.assert_allclose(p.windows, [[0.0, 16.0]])
    np.testing.assert_allclose(p.scores, [0.475])
