"""The moment proposal generator (MPG), span scores (Eq. 2) and temporal NMS.

All functions work on a batch of score curves at once: `curves` is a float array
`(n_curves, T_max)` padded with NaN past each curve's length. A trial runs the MPG on
about ten thousand curves (1550 queries x up to six curves each), so the work is done in
whole-array operations; the only Python loop left is NMS over each query's few spans.

Spans are frame indices `[first, last]`, both inclusive; frame i is the clip [2i, 2i+2) s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.core.registries import PRUNERS, SPAN_SCORERS


@dataclass(frozen=True)
class Spans:
    """Proposals of a batch of curves, flattened: span s belongs to curve `curve[s]`."""

    curve: np.ndarray  # (S,) int
    first: np.ndarray  # (S,) int
    last: np.ndarray  # (S,) int
    score: np.ndarray  # (S,) float

    def __len__(self) -> int:
        return int(self.curve.shape[0])


class CurveBatch:
    """A batch of curves and what the MPG derives from them alone, computed once.

    A sweep runs the MPG on the same curves with many settings; the prefix sums, the
    sorted values behind the percentiles, the thresholds and selected frames of a
    (bins, top_k) pair do not depend on the other settings, so they are kept here."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self._memo: dict[tuple[Any, ...], Any] = {}

    def _get(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def buckets(self) -> list[tuple[np.ndarray, CurveBatch]]:
        """The curves grouped by length, each group trimmed to its own longest curve.

        Curves padded to the batch's longest one cost work for frames they do not have;
        with videos of 10 s to 10 min (ActivityNet) that is most of the work. Lengths within
        a group differ by at most a third, so the work follows the frames there are."""
        def make() -> list[tuple[np.ndarray, CurveBatch]]:
            lengths = np.sum(~np.isnan(self.values), axis=1)
            order = np.argsort(lengths, kind="stable")
            out: list[tuple[np.ndarray, CurveBatch]] = []
            start = 0
            while start < order.size:
                top = max(int(lengths[order[start]]), 1) * 4 // 3 + 1
                stop = int(np.searchsorted(lengths[order], top, side="right"))
                rows = np.sort(order[start:stop])
                width = max(int(lengths[rows].max()), 1)
                out.append((rows, CurveBatch(self.values[rows, :width])))
                start = stop
            return out
        return self._get(("buckets",), make)

    @property
    def prefix(self) -> np.ndarray:
        """(N, T + 1) prefix sums of the curves, padding counted as 0."""
        return self._get(("prefix",), lambda: _prefix(np.nan_to_num(self.values, nan=0.0)))

    def percentiles(self, n: float) -> np.ndarray:
        return self._get(("percentile", n), lambda: _percentiles(self, n))

    def selected(self, bins: int, top_k: int, lo: float, hi: float) -> np.ndarray:
        """(N, T) frames above each curve's histogram threshold."""
        def make() -> np.ndarray:
            thr = _thresholds(self.values, bins, top_k, lo, hi)
            with np.errstate(invalid="ignore"):
                return np.isfinite(self.values) & (self.values > thr[:, None])
        return self._get(("selected", bins, top_k, lo, hi), make)

    def selected_prefix(self, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prefix sums of the selected frames' count and scores (VTG-GPT's span score)."""
        def make() -> tuple[np.ndarray, np.ndarray]:
            vals = np.where(selected, np.nan_to_num(self.values, nan=0.0), 0.0)
            return _prefix(selected.astype(np.float64)), _prefix(vals)
        return self._get(("selected prefix", id(selected)), make)


def _prefix(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x, axis=1)], axis=1)


def batch_of(curves: np.ndarray | CurveBatch) -> CurveBatch:
    return curves if isinstance(curves, CurveBatch) else CurveBatch(curves)


def histogram_thresholds(
    curves: np.ndarray, bins: int = 10, top_k: int = 8, lo: float = 0.0, hi: float = 1.0
) -> np.ndarray:
    """Per curve, the lower edge of the highest bin whose bins-at-or-above hold >= top_k frames.

    The "inverse cumulative histogram": a 10-bin histogram over [0, 1], walked down from
    the top bin until `top_k` frames are covered. Bin membership follows `np.histogram`
    exactly (last bin closed, values outside [lo, hi] ignored), so results match VTG-GPT.
    A curve that never reaches `top_k` frames gets threshold `lo` (VTG-GPT's rule).
    """
    return _thresholds(batch_of(curves).values, bins, top_k, lo, hi)


def _thresholds(curves: np.ndarray, bins: int, top_k: int, lo: float, hi: float) -> np.ndarray:
    edges = np.linspace(lo, hi, bins + 1)
    valid = np.isfinite(curves) & (curves >= lo) & (curves <= hi)
    x = np.where(valid, curves, lo)
    idx = np.floor((x - lo) * (bins / (hi - lo))).astype(np.int64)
    idx = np.clip(idx, 0, bins - 1)
    # float round-off: move values to the bin whose edges really contain them
    idx = np.where(x < edges[idx], idx - 1, idx)
    idx = np.where((x >= edges[np.minimum(idx + 1, bins)]) & (idx < bins - 1), idx + 1, idx)
    rows = np.broadcast_to(np.arange(curves.shape[0])[:, None], idx.shape)
    counts = np.bincount((rows * bins + idx)[valid], minlength=curves.shape[0] * bins).reshape(-1, bins)
    at_or_above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    ok = at_or_above >= top_k
    # the highest bin index b with ok[b]; none -> lo
    highest = np.where(ok.any(axis=1), bins - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
    return np.where(highest >= 0, edges[np.maximum(highest, 0)], lo)


def merge_gaps(selected: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group each curve's selected frames into spans: a new span starts after a gap > `gap`.

    Returns (curve, first, last) per span, in curve order then time order.
    """
    rows, cols = np.nonzero(selected)
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    new = np.ones(rows.size, dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]) | (cols[1:] - cols[:-1] > gap)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], rows.size) - 1
    return rows[starts], cols[starts], cols[ends]


def span_means(curves: np.ndarray | CurveBatch, curve: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Mean score of frames first..last (inclusive) of each span, from prefix sums."""
    prefix = batch_of(curves).prefix
    return (prefix[curve, last + 1] - prefix[curve, first]) / (last - first + 1)


def group_sum(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(groups, weights=values, minlength=n_groups)


def best_per_group(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Boolean mask of the first maximum of `values` within each group."""
    if values.size and (np.diff(groups) >= 0).all():  # grouped already (the MPG's spans): O(n)
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        best = np.maximum.reduceat(values, starts)
        is_best = values == np.repeat(best, np.diff(np.r_[starts, values.size]))
        first = np.cumsum(is_best) - np.repeat(np.cumsum(is_best)[starts] - is_best[starts],
                                               np.diff(np.r_[starts, values.size]))
        return is_best & (first == 1)
    order = np.lexsort((-values, groups))
    first_of_group = np.ones(order.size, dtype=bool)
    first_of_group[1:] = groups[order][1:] != groups[order][:-1]
    mask = np.zeros(values.size, dtype=bool)
    mask[order[first_of_group]] = True
    return mask


def curve_percentiles(curves: np.ndarray | CurveBatch, n: float) -> np.ndarray:
    """The n-th percentile of each curve's frame scores, ignoring padding.

    Equal to `np.nanpercentile(curves, n, axis=1)` (linear interpolation), computed for
    all rows at once: nanpercentile loops over rows in Python, which dominated a trial."""
    return batch_of(curves).percentiles(n)


def _percentiles(batch: CurveBatch, n: float) -> np.ndarray:
    curves = batch.values
    if n <= 0:
        return np.full(curves.shape[0], -np.inf)
    ordered = batch._get(("sorted",), lambda: np.sort(curves, axis=1))  # NaN padding sorts last
    count = batch._get(("count",), lambda: np.sum(~np.isnan(curves), axis=1))
    h = (np.maximum(count, 1) - 1) * (n / 100.0)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    a = np.take_along_axis(ordered, lo[:, None], axis=1)[:, 0]
    b = np.take_along_axis(ordered, hi[:, None], axis=1)[:, 0]
    out = a + (h - lo) * (b - a)
    return np.where(count > 0, out, np.nan)


# -- merging and pruning (steps 2 and 3) --------------------------------------------------------
SpanTriple = tuple[np.ndarray, np.ndarray, np.ndarray]  # (curve, first, last) per span


Curves = np.ndarray | CurveBatch  # the MPG's functions take raw arrays or a batch with its memo


def _merged_and_kept(curves: Curves, selected: np.ndarray, gap: int, keep_rule: Any, n: float) -> SpanTriple:
    """Merge across gaps <= `gap`, then keep the spans `keep_rule(curves, curve, means, n)` marks."""
    curve, first, last = merge_gaps(selected, gap)
    if curve.size == 0:
        return curve, first, last
    keep = keep_rule(curves, curve, span_means(curves, curve, first, last), n)
    return curve[keep], first[keep], last[keep]


def keep_above_frame_percentile(curves: Curves, curve: np.ndarray, means: np.ndarray, n: float) -> np.ndarray:
    """Spans whose mean is not in the bottom n% of the curve's frame scores, plus each
    curve's best span (so no curve loses every proposal)."""
    keep = means >= curve_percentiles(curves, n)[curve]
    return keep | best_per_group(means, curve, batch_of(curves).n)


def keep_top_spans(curves: Curves, curve: np.ndarray, means: np.ndarray, n: float) -> np.ndarray:
    """All but the bottom n% of each curve's spans by mean, plus each curve's best span."""
    if n <= 0 or means.size == 0:
        return np.ones(means.size, dtype=bool)
    order = np.lexsort((means, curve))
    sorted_curve = curve[order]
    counts = np.bincount(curve, minlength=batch_of(curves).n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(order.size) - starts[sorted_curve]
    n_drop = np.floor(counts * n / 100.0).astype(np.int64)
    keep = np.empty(order.size, dtype=bool)
    keep[order] = rank >= n_drop[sorted_curve]
    return keep | best_per_group(means, curve, batch_of(curves).n)


@PRUNERS.register("frames")
def prune_by_frame_percentile(curves: Curves, selected: np.ndarray, gap: int, n: float) -> SpanTriple:
    """Drop spans whose mean falls in the bottom n% of the curve's frame scores (default)."""
    return _merged_and_kept(curves, selected, gap, keep_above_frame_percentile, n)


@PRUNERS.register("spans")
def prune_bottom_spans(curves: Curves, selected: np.ndarray, gap: int, n: float) -> SpanTriple:
    """Drop the bottom n% of each curve's spans by mean (about -5 mAP on QVHighlights val)."""
    return _merged_and_kept(curves, selected, gap, keep_top_spans, n)


@PRUNERS.register("none")
def prune_nothing(curves: Curves, selected: np.ndarray, gap: int, n: float) -> SpanTriple:
    """Keep every merged span (VTG-GPT)."""
    return merge_gaps(selected, gap)


@PRUNERS.register("merge")
def merge_with_pruning(curves: Curves, selected: np.ndarray, gap: int, n: float) -> SpanTriple:
    """Do not merge two groups when the merged span's mean would fall in the bottom n%.

    The appendix's wording of pruning: two neighbouring groups (gap <= `gap`) are merged
    unless the merged span's mean would fall in the bottom n% of the curve's frame scores.
    Sequential by nature; used only when `prune: merge` is asked for."""
    cuts = curve_percentiles(curves, n)
    c0, f0, l0 = merge_gaps(selected, 0)  # runs of adjacent selected frames
    out_c, out_f, out_l = [], [], []
    prefix = batch_of(curves).prefix
    for i in range(c0.size):
        c, f, last = int(c0[i]), int(f0[i]), int(l0[i])
        if out_c and out_c[-1] == c and f - out_l[-1] <= gap:
            pf = out_f[-1]
            merged_mean = (prefix[c, last + 1] - prefix[c, pf]) / (last - pf + 1)
            if merged_mean >= cuts[c]:
                out_l[-1] = last
                continue
        out_c.append(c)
        out_f.append(f)
        out_l.append(last)
    return (np.asarray(out_c, dtype=np.int64), np.asarray(out_f, dtype=np.int64),
            np.asarray(out_l, dtype=np.int64))


# -- span scores (Eq. 2) --------------------------------------------------------------------


@SPAN_SCORERS.register("granalign")
def span_score_whole(
    curves: Curves, selected: np.ndarray, curve: np.ndarray, first: np.ndarray,
    last: np.ndarray, lam: float,
) -> np.ndarray:
    """Eq. 2: (1 - lam) * mean over the whole span + lam * its share of the curve's
    surviving span length."""
    means = span_means(curves, curve, first, last)
    length = (last - first + 1).astype(np.float64)
    total = group_sum(length, curve, batch_of(curves).n)[curve]
    return (1.0 - lam) * means + lam * length / total


@SPAN_SCORERS.register("selected")
def span_score_selected(
    curves: Curves, selected: np.ndarray, curve: np.ndarray, first: np.ndarray,
    last: np.ndarray, lam: float,
) -> np.ndarray:
    """VTG-GPT's variant: mean and length over the selected frames inside the span only."""
    batch = batch_of(curves)
    psel, pval = batch.selected_prefix(selected)
    count = psel[curve, last + 1] - psel[curve, first]
    means = (pval[curve, last + 1] - pval[curve, first]) / count
    total = group_sum(count, curve, batch.n)[curve]
    return (1.0 - lam) * means + lam * count / total


# -- the MPG -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class MPGParams:
    """The MPG's parameters, by keyword only. Their defaults and checks are declared once, in
    the experiment config (the `mpg` role: `ExperimentConfig.values("mpg")`); `lo`/`hi`
    bound the histogram (scores live in [0, 1] after normalisation)."""

    bins: int
    top_k: int
    gap: int
    n: float
    lam: float
    prune: str
    span_score: str
    lo: float = 0.0
    hi: float = 1.0


BUCKET_ABOVE = 120  # frames: longer batches are processed in length groups (`CurveBatch.buckets`)


def moment_proposals(curves: Curves, p: MPGParams) -> Spans:
    """Threshold, merge, prune and score every curve of the batch (in groups of similar
    length when curves are long: every step works per curve, so grouping changes nothing
    but the work)."""
    batch = batch_of(curves)
    if batch.values.shape[1] <= BUCKET_ABOVE or batch.n == 0:
        return _proposals(batch, p)
    parts = [(rows, _proposals(b, p)) for rows, b in batch.buckets()]
    curve = np.concatenate([rows[sp.curve] for rows, sp in parts])
    first = np.concatenate([sp.first for _, sp in parts])
    last = np.concatenate([sp.last for _, sp in parts])
    score = np.concatenate([sp.score for _, sp in parts])
    order = np.lexsort((first, curve))  # curve order, then time: as from one batch
    return Spans(curve[order], first[order], last[order], score[order])


def _proposals(batch: CurveBatch, p: MPGParams) -> Spans:
    selected = batch.selected(p.bins, p.top_k, p.lo, p.hi)
    curve, first, last = PRUNERS.get(p.prune)(batch, selected, p.gap, p.n)
    score = SPAN_SCORERS.get(p.span_score)(batch, selected, curve, first, last, p.lam)
    return Spans(curve, first, last, score)


# -- NMS -------------------------------------------------------------------------------------
def segment_iou(s1: np.ndarray, e1: np.ndarray, s2: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Elementwise (broadcast) IoU of intervals [s1, e1] and [s2, e2]; a zero-length union gives 0."""
    inter = np.clip(np.minimum(e1, e2) - np.maximum(s1, s2), 0, None)
    union = (e1 - s1) + (e2 - s2) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def interval_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of intervals a (n, 2) and b (k, 2)."""
    return segment_iou(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])


def temporal_nms(intervals: np.ndarray, scores: np.ndarray, tau: float, max_keep: int | None = None) -> np.ndarray:
    """One query's NMS (the batched pass on a single query): the indices kept, best first."""
    n = len(scores)
    idx, valid = batched_nms(np.zeros(n, dtype=np.int64), intervals[:, 0], intervals[:, 1], scores, 1,
                             tau, max_keep or max(n, 1))
    return idx[0][valid[0]]


def batched_nms(
    owner: np.ndarray, first: np.ndarray, end: np.ndarray, score: np.ndarray, n_queries: int,
    tau: float, max_keep: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy temporal NMS of every query's pooled spans at once.

    Spans [first, end) (or closed, as the caller passes `end`) belong to query `owner`. Per
    query, spans are taken by decreasing score (ties: the earlier span), a span is dropped
    when its IoU with a kept span is at least `tau`, and at most `max_keep` are kept. The
    spans are laid out as a padded (Q, S) array and the greedy pass walks the S columns,
    each step one vectorised operation over all queries: no Python loop per query.

    Returns (Q, max_keep) span indices (best first) and their validity mask.
    """
    order = np.lexsort((-score, owner))  # by query, then score descending, stable
    own = owner[order]
    counts = np.bincount(owner, minlength=n_queries)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = int(counts.max()) if counts.size and counts.max() > 0 else 0
    kept_idx = np.full((n_queries, max(max_keep, 1)), -1, dtype=np.int64)
    if width == 0:
        return kept_idx[:, :max_keep], kept_idx[:, :max_keep] >= 0
    idx = np.full((n_queries, width), -1, dtype=np.int64)
    idx[own, np.arange(order.size) - starts[own]] = order
    valid = idx >= 0
    s = np.where(valid, first[np.maximum(idx, 0)], 0).astype(np.float64)
    e = np.where(valid, end[np.maximum(idx, 0)], 0).astype(np.float64)
    alive = valid.copy()
    keep = np.zeros_like(valid)
    n_kept = np.zeros(n_queries, dtype=np.int64)
    for i in range(width):
        k = alive[:, i] & (n_kept < max_keep)
        keep[:, i] = k
        n_kept += k
        rows = np.flatnonzero(k)  # only the queries that kept span i suppress anything now
        if i + 1 < width and rows.size:
            iou = segment_iou(s[rows, i, None], e[rows, i, None], s[rows, i + 1:], e[rows, i + 1:])
            alive[rows, i + 1:] &= iou < tau
        if not ((n_kept < max_keep) & (counts > i + 1)).any():
            break  # every query has its windows, or no span left: the rest cannot be kept
    rows, cols = np.nonzero(keep)
    rank = np.cumsum(keep, axis=1)[rows, cols] - 1
    kept_idx[rows, rank] = idx[rows, cols]
    kept_idx = kept_idx[:, :max_keep]
    return kept_idx, kept_idx >= 0
