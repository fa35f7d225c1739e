"""Hand-worked cases for the MPG, Eq. 2 span scores and temporal NMS."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config.experiment import ExperimentConfig
from harness.method.proposals import (
    MPGParams,
    histogram_thresholds,
    interval_iou,
    merge_gaps,
    moment_proposals,
    span_means,
    span_score_selected,
    span_score_whole,
    temporal_nms,
)

CURVE = np.array([0.05, 0.15, 0.95, 0.92, 0.85, 0.81, 0.75, 0.71, 0.65, 0.61, 0.3, 0.2])


def mpg(**overrides: object) -> MPGParams:
    """The MPG's parameters: the config's declared defaults (`ExperimentConfig`, role
    `mpg`) with `overrides`, by keyword."""
    return MPGParams(**{**ExperimentConfig().values("mpg"), **overrides})



def test_threshold_walks_down_until_top_k_frames():
    # bins [0.9,1]: 2 frames; [0.8,0.9): 2 more -> 4 >= 4 at bin 8, lower edge 0.8
    assert histogram_thresholds(CURVE[None], top_k=4)[0] == pytest.approx(0.8)
    # ... [0.7,0.8): 6, [0.6,0.7): 8 >= 8 -> 0.6
    assert histogram_thresholds(CURVE[None], top_k=8)[0] == pytest.approx(0.6)
    # never reaches 20 frames -> 0 (VTG-GPT's rule)
    assert histogram_thresholds(CURVE[None], top_k=20)[0] == 0.0


def _reference_threshold(scores: np.ndarray, bins: int, top_k: int) -> float:
    counts, edges = np.histogram(scores, bins=bins, range=(0, 1))
    for i in range(len(counts) - 1, -1, -1):
        if counts[i:].sum() >= top_k:
            return float(edges[i])
    return 0.0


def test_threshold_matches_numpy_histogram_on_edge_values():
    rng = np.random.default_rng(0)
    curves = rng.choice(np.round(np.linspace(0, 1, 21), 2), size=(300, 30))
    curves[:, 5] = rng.random(300)
    got = histogram_thresholds(curves, bins=10, top_k=8)
    want = [_reference_threshold(c, 10, 8) for c in curves]
    np.testing.assert_allclose(got, want)


def test_threshold_ignores_padding():
    padded = np.full((1, 20), np.nan)
    padded[0, :12] = CURVE
    assert histogram_thresholds(padded, top_k=4)[0] == pytest.approx(0.8)


def test_merge_gaps():
    sel = np.zeros((3, 12), dtype=bool)
    sel[0, [2, 3, 4, 5]] = True
    sel[1, [1, 3, 9]] = True
    curve, first, last = merge_gaps(sel, gap=1)
    assert list(zip(curve, first, last, strict=True)) == [(0, 2, 5), (1, 1, 1), (1, 3, 3), (1, 9, 9)]
    curve, first, last = merge_gaps(sel, gap=2)
    assert list(zip(curve, first, last, strict=True)) == [(0, 2, 5), (1, 1, 3), (1, 9, 9)]
    # 9 - 3 = 6 <= gap 6: one span
    curve, first, last = merge_gaps(sel, gap=6)
    assert list(zip(curve, first, last, strict=True)) == [(0, 2, 5), (1, 1, 9)]


def test_merge_gaps_empty_selection():
    curve, first, last = merge_gaps(np.zeros((2, 5), dtype=bool), gap=6)
    assert curve.size == first.size == last.size == 0


def test_eq2_span_score_by_hand():
    curves = np.array([[0.0, 1.0, 1.0, 0.0, 0.5, 0.5]])
    sel = curves > 0.2
    c, f, last = np.array([0, 0]), np.array([1, 4]), np.array([2, 5])
    np.testing.assert_allclose(span_means(curves, c, f, last), [1.0, 0.5])
    # lengths 2 and 2 of 4: 0.7 * 1.0 + 0.3 * 0.5 = 0.85 and 0.7 * 0.5 + 0.3 * 0.5 = 0.5
    np.testing.assert_allclose(span_score_whole(curves, sel, c, f, last, lam=0.3), [0.85, 0.5])


def test_selected_span_score_counts_selected_frames_only():
    curves = np.array([[0.9, 0.1, 0.8, 0.0, 0.0, 0.6]])
    sel = curves > 0.5  # frames 0, 2, 5
    c, f, last = np.array([0, 0]), np.array([0, 5]), np.array([2, 5])
    # span [0,2]: selected 0.9, 0.8 -> mean 0.85, 2 of 3 selected; span [5,5]: 0.6, 1 of 3
    np.testing.assert_allclose(
        span_score_selected(curves, sel, c, f, last, lam=0.5),
        [0.5 * 0.85 + 0.5 * 2 / 3, 0.5 * 0.6 + 0.5 * 1 / 3],
    )


def test_mpg_prunes_bottom_percentile_but_keeps_best():
    # two groups selected with threshold 0 (top_k larger than T): [0..1] and [4..5]
    curve = np.array([[0.3, 0.3, 0.0, 0.0, 0.02, 0.02, 0.0, 0.0]])
    p = mpg(top_k=100, gap=1, n=50, lam=0.0)
    spans = moment_proposals(curve, p)
    # 50th percentile of the frames = 0.01: [4,5] mean 0.02 survives; with n=80 it does not
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 1), (4, 5)]
    spans = moment_proposals(curve, mpg(top_k=100, gap=1, n=80, lam=0.0))
    # 80th percentile = 0.084 > 0.02: dropped; [0,1] mean 0.3 stays
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 1)]
    # even a cut above every span keeps the best one
    spans = moment_proposals(curve, mpg(top_k=100, gap=1, n=99, lam=0.0))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 1)]


def test_mpg_spans_mode_drops_bottom_spans():
    curve = np.array([[0.9, 0.0, 0.5, 0.0, 0.2, 0.0, 0.7, 0.0, 0.1, 0.0]])
    p = mpg(top_k=100, gap=0, n=40, lam=0.0, prune="spans")
    spans = moment_proposals(curve, p)
    # five single-frame spans; floor(5 * 0.4) = 2 lowest (0.1, 0.2) dropped
    assert sorted(spans.first.tolist()) == [0, 2, 6]


def test_mpg_merge_mode_refuses_weak_merges():
    curve = np.array([[0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 0.85, 0.0, 0.0, 0.0]])
    # top_k 3: threshold 0.8 selects frames 0, 1, 6; gap 5 joins them in "frames" mode,
    # and the span mean 2.65 / 7 = 0.379 is above the 20th percentile (0)
    spans = moment_proposals(curve, mpg(top_k=3, gap=5, n=20, lam=0.0))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 6)]
    # "merge" mode with n=80: the merged mean 0.379 < the 80th percentile (0.86): no merge
    spans = moment_proposals(curve, mpg(top_k=3, gap=5, n=80, lam=0.0, prune="merge"))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 1), (6, 6)]


def test_interval_iou_and_nms():
    iv = np.array([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0]])
    np.testing.assert_allclose(interval_iou(iv[:1], iv)[0], [1.0, 0.9, 0.0])
    scores = np.array([0.9, 0.8, 0.7])
    # IoU 0.9 >= tau 0.9: the second span goes
    assert temporal_nms(iv, scores, tau=0.9).tolist() == [0, 2]
    assert temporal_nms(iv, scores, tau=0.95).tolist() == [0, 1, 2]
    assert temporal_nms(iv, scores, tau=0.95, max_keep=2).tolist() == [0, 1]


def test_nms_ties_keep_the_earlier_span():
    iv = np.array([[0.0, 4.0], [0.0, 4.0], [10.0, 12.0]])
    assert temporal_nms(iv, np.array([0.5, 0.5, 0.5]), tau=0.9).tolist() == [0, 2]


def test_nms_empty():
    assert temporal_nms(np.zeros((0, 2)), np.zeros(0), tau=0.9).size == 0


def test_curve_percentiles_equal_nanpercentile_with_padding():
    from harness.method.proposals import curve_percentiles

    rng = np.random.default_rng(1)
    curves = rng.random((50, 30))
    lengths = rng.integers(1, 31, size=50)
    curves[np.arange(30)[None, :] >= lengths[:, None]] = np.nan
    for n in (10, 20, 37.5, 90):
        np.testing.assert_allclose(curve_percentiles(curves, n), np.nanpercentile(curves, n, axis=1))


def test_a_span_whose_mean_equals_the_percentile_is_kept():
    # top_k 100 never reached: threshold 0, frames 0, 2, 4 selected, gap 0 keeps them apart.
    # Frame scores sorted [0, 0, .25, .25, .75]: the 50th percentile is the third, 0.25
    # exactly, and the spans [2,2] and [4,4] have mean 0.25 exactly: "not in the bottom
    # n%" keeps them (mean >= cut); a strict comparison would drop both.
    curve = np.array([[0.75, 0.0, 0.25, 0.0, 0.25]])
    spans = moment_proposals(curve, mpg(top_k=100, gap=0, n=50, lam=0.0))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 0), (2, 2), (4, 4)]
    # a cut above them (80th percentile: 0.25 + 0.2 * 0.5 = 0.35): only the best span is left
    spans = moment_proposals(curve, mpg(top_k=100, gap=0, n=80, lam=0.0))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 0)]


def test_merge_mode_merges_when_the_merged_mean_equals_the_percentile():
    # threshold 0 selects frames 0, 2, 3, 4, each its own run (merge_gaps with gap 0), then
    # neighbours within gap 2 merge unless the merged mean falls below the percentile.
    # n=50: the cut is 0.5 (sorted [0, 0, .5, .5, .75, .75]); merged means 1.5 / 3, 2 / 4,
    # 2.5 / 5 are all 0.5 exactly: not below the cut, so everything merges into [0,4]
    curve = np.array([[0.75, 0.0, 0.75, 0.5, 0.5, 0.0]])
    spans = moment_proposals(curve, mpg(top_k=100, gap=2, n=50, lam=0.0, prune="merge"))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 4)]
    # n=70: the cut is 0.5 + 0.5 * 0.25 = 0.625. [0]+[2] (0.5) stays apart; [2]+[3] has mean
    # 0.625 exactly and merges; [2,3]+[4] (1.75 / 3 = 0.583) does not
    spans = moment_proposals(curve, mpg(top_k=100, gap=2, n=70, lam=0.0, prune="merge"))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 0), (2, 3), (4, 4)]


@pytest.mark.parametrize("prune, n", [("frames", 90), ("spans", 100)])
def test_the_best_span_survives_a_cut_above_every_span(prune: str, n: float):
    # top_k 4: threshold 0.7 selects frames 0, 3 (1.0) and 8, 11 (0.75); gap 3 makes the
    # spans [0,3] (mean 0.5) and [8,11] (mean 0.375). The 90th percentile of the frame
    # scores is 0.75 + 0.9 * 0.25 = 0.975, above both means; dropping the bottom 100% of the
    # spans drops both: the best span ([0,3]) is kept all the same.
    curve = np.array([[1.0, 0, 0, 1.0, 0, 0, 0, 0, 0.75, 0, 0, 0.75]])
    spans = moment_proposals(curve, mpg(top_k=4, gap=3, n=n, lam=0.0, prune=prune))
    assert list(zip(spans.first, spans.last, strict=True)) == [(0, 3)]
    np.testing.assert_allclose(spans.score, [0.5])
