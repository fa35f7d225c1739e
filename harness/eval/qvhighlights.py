"""The QVHighlights protocol: the official `standalone_eval` rules.

Every number the paper's tables report comes out of here, so the QVHighlights evaluator
reproduces each metric of jayleicn/moment_detr `standalone_eval/eval.py` to the second
decimal (a conformance test pins it to the reference metrics that ship with the data). It is
written from the rules, not copied, and vectorised over all queries at once: a sweep scores
thousands of configurations, and the official loop-per-query code takes ~9 s a run.

Rules reproduced (see METHOD.md, "Evaluation"):

- MR-R1@t: the FIRST predicted window (file order, not re-sorted) against the GT window it
  overlaps most; a hit when IoU >= t. A query with no predicted window counts as a miss (the
  official code crashes on it).
- MR-mAP@t: the first 10 predicted windows re-sorted by score (stable, so ties keep file
  order), greedy matching of each to the unmatched GT window of highest IoU >= t, VOC
  all-point interpolated AP per query, averaged over queries; a query with no predicted window
  is left out of the mean, as the official code does. `average` is the mean over
  t = 0.5, 0.55, ..., 0.95.
- short / middle / long: only GT windows of length in (0, 10], (10, 30], (30, 150] are kept
  and queries left with none are dropped, for both R1 and mAP; `full` keeps every window.
- HL-min-{Fair,Good,VeryGood}: a clip is positive when an annotator scored it >= 2 / 3 / 4,
  over the official clip grid of int(duration / 2) clips. HL-Hit1: the clip with the highest
  predicted saliency (over the whole predicted list) is positive for at least one annotator.
  HL-mAP: per query and annotator, the official AP (mean over distinct recall levels of the
  interpolated precision; predictions cut or zero-padded to the grid; all-negative labels
  give 0, all-positive 1), averaged over queries and annotators.
- Every metric is reported in percent rounded to two decimals, as the official code does.

Additions beyond the official output (in `brief` only): `MR-full-R1@0.3` and
`MR-full-mIoU`, the mean over queries of the IoU between the first predicted window and the
GT window it overlaps most (0 for a query with no prediction).

IoU with a zero-length union (a point window against the same point) is 0 here; the official
code would produce NaN. QVHighlights GT windows are never empty, so this never matters there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.core.constants import CLIP_SECONDS
from harness.core.errors import DataError
from harness.core.query import Query
from harness.core.registries import PROTOCOLS
from harness.eval.predictions import align
from harness.eval.protocols import PerQuery, Protocol
from harness.eval.windows import Windows, cross_iou, paired_iou, pct, recall_at_one

IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
MAX_PRED_WINDOWS = 10  # official: mAP looks at the first 10 predicted windows only
LENGTH_RANGES = {"short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0)}
HL_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))
# the keys of `brief`: what tables and sweeps may name
BRIEF_KEYS = (
    "MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7",
    "MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-full-mIoU",
    "MR-long-mAP", "MR-middle-mAP", "MR-short-mAP",
    *(f"HL-min-{level}-{m}" for level, _ in HL_LEVELS for m in ("mAP", "Hit1")),
)  # fmt: skip


def sort_by_score(pred: Windows) -> Windows:
    """Windows of each query by decreasing score, stable (ties keep file order), pads last."""
    order = np.lexsort((-pred.score, ~pred.valid), axis=-1)
    return Windows(
        np.take_along_axis(pred.se, order[..., None], axis=1),
        np.take_along_axis(pred.valid, order, axis=1),
        np.take_along_axis(pred.score, order, axis=1),
    )


def greedy_true_positives(iou: np.ndarray, thresholds: np.ndarray, n_gt: np.ndarray | None = None) -> np.ndarray:
    """(Q, T, P) bool: is prediction p a true positive at threshold t?

    `iou` (Q, P, G) with predictions in rank order and -1 for padding. Each prediction in turn
    takes the still-unmatched GT window of highest IoU, if that IoU >= t; among equal IoUs the
    later GT window wins, as in the official loop (stable ascending argsort, then reversed).

    Queries are processed in groups of similar GT counts (`n_gt`, the valid GT windows per
    query, with their windows first): a padded G of the split's largest count (25 on
    QVHighlights val, where two thirds of the queries have one window) would cost ten times
    the work. With one GT window the greedy pass reduces to "the first hit".
    """
    if n_gt is None:
        return _greedy(iou, thresholds)
    tp = np.zeros((iou.shape[0], len(thresholds), iou.shape[1]), dtype=bool)
    single = n_gt <= 1
    if single.any():
        hit = iou[single, :, :1].transpose(0, 2, 1) >= thresholds[None, :, None]  # (Qs, T, P)
        tp[single] = hit & (np.cumsum(hit, axis=-1) == 1)
    for lo, hi in ((1, 4), (4, int(n_gt.max(initial=0)))):  # few groups: each is a Python loop
        group = (n_gt > lo) & (n_gt <= hi)
        if group.any():
            tp[group] = _greedy(iou[group, :, :hi], thresholds)
    return tp


def _greedy(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    q, p, g = iou.shape
    locked = np.zeros((q, len(thresholds), g), dtype=bool)
    tp = np.zeros((q, len(thresholds), p), dtype=bool)
    rows = np.arange(q)[:, None]
    cols = np.arange(len(thresholds))[None, :]
    for j in range(p):
        cur = iou[:, None, j, :]  # (Q, 1, G)
        cand = (cur >= thresholds[None, :, None]) & ~locked
        ranked = np.where(cand, cur, -np.inf)[..., ::-1]
        pick = g - 1 - np.argmax(ranked, axis=-1)  # (Q, T): last index among the max
        hit = cand.any(axis=-1)
        locked[rows, cols, pick] |= hit
        tp[:, :, j] = hit
    return tp


def interpolated_ap(tp: np.ndarray, valid: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """VOC all-point interpolated AP from ranked hits: (Q, T, P) -> (Q, T).

    AP = sum over recall steps of (recall step) x (max precision at this rank or later).
    Padded predictions sit at the end and are neither hits nor misses.
    """
    tp_cum = np.cumsum(tp, axis=-1, dtype=float)
    seen = np.cumsum(valid, axis=-1, dtype=float)[:, None, :]
    precision = np.divide(tp_cum, seen, out=np.zeros_like(tp_cum), where=seen > 0)
    best_later = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]
    recall = tp_cum / n_gt[:, None, None]
    step = np.diff(recall, axis=-1, prepend=0.0)
    return np.sum(step * best_later, axis=-1)


def mr_ap(pred: Windows, gt: Windows, thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """(Q, T) per-query AP of the first 10 predicted windows re-sorted by score."""
    ranked = sort_by_score(pred[:, :MAX_PRED_WINDOWS])
    gt, _ = pack_windows(gt)  # greedy_true_positives groups by count: valid windows first
    return ap_from_iou(ranked.valid, cross_iou(ranked.se, gt.se), gt.valid, thresholds)


def pack_windows(w: Windows) -> tuple[Windows, np.ndarray]:
    """The same windows with each query's valid ones first (in their order), the padding
    trimmed to the longest row (what `mr_ap` reads fastest), and the columns they came from."""
    order = np.argsort(~w.valid, axis=1, kind="stable")
    width = max(int(w.valid.sum(axis=1).max(initial=0)), 1)
    order = order[:, :width]
    packed = Windows(np.take_along_axis(w.se, order[..., None], axis=1),
                     np.take_along_axis(w.valid, order, axis=1), np.take_along_axis(w.score, order, axis=1))
    return packed, order


def ap_from_iou(ranked_valid: np.ndarray, iou: np.ndarray, gt_valid: np.ndarray,
                thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """(Q, T) per-query AP from the IoUs of score-ranked predictions with packed GT windows."""
    if gt_valid.shape[1] == 1 and gt_valid.all():
        # one GT window: the AP is the precision where it is first found, 1 / (rank + 1),
        # exactly what the interpolation below computes for this case, at a fraction of it
        hit = (ranked_valid[:, :, None] & (iou >= np.asarray(thresholds)[None, None, :]))
        found = hit.any(axis=1)
        rank = np.argmax(hit, axis=1)
        return np.where(found, 1.0 / (rank + 1.0), 0.0)
    iou = np.where(ranked_valid[:, :, None] & gt_valid[:, None, :], iou, -1.0)
    n_gt = gt_valid.sum(axis=1)
    tp = greedy_true_positives(iou, np.asarray(thresholds, dtype=float), n_gt)
    return interpolated_ap(tp, ranked_valid, n_gt.astype(float))


def per_query_mr(pred: Windows, iou: np.ndarray, gt: Windows) -> tuple[np.ndarray, np.ndarray]:
    """(Q, T) AP per query and threshold, and (Q,) the first window's IoU (R1)."""
    order = np.lexsort((-pred.score, ~pred.valid), axis=-1)
    if (order == np.arange(order.shape[1])).all():  # already by score (a trial's own arrays)
        ranked_valid, ranked_iou = pred.valid, iou
    else:
        ranked_valid = np.take_along_axis(pred.valid, order, axis=1)
        ranked_iou = np.take_along_axis(iou, order[..., None], axis=1)
    ap = ap_from_iou(ranked_valid, ranked_iou, gt.valid)
    first = np.where(gt.valid, iou[:, 0, :], -np.inf)
    chosen = np.take_along_axis(gt.se, np.argmax(first, axis=1)[:, None, None], axis=1)[:, 0]
    top1 = np.where(pred.valid[:, 0], paired_iou(pred.se[:, 0], chosen), 0.0)
    return ap, top1


def grouped_mr(pred: Windows, gt: Windows) -> tuple[np.ndarray, np.ndarray]:
    """`per_query_mr` against packed GT, queries grouped by their number of GT windows so
    that each group pads to its own count (most QVHighlights queries have one window, a few
    up to 25)."""
    n_gt = gt.valid.sum(axis=1)
    ap = np.zeros((n_gt.size, len(IOU_THRESHOLDS)))
    top1 = np.zeros(n_gt.size)
    for lo, hi in ((-1, 1), (1, 4), (4, max(int(n_gt.max(initial=0)), 4))):
        rows = np.flatnonzero((n_gt > lo) & (n_gt <= hi))
        if rows.size:
            p, g = pred[rows], gt[rows, :hi]
            ap[rows], top1[rows] = per_query_mr(p, cross_iou(p.se, g.se), g)
    return ap, top1


def _mr_summary(ap: np.ndarray, has_pred: np.ndarray, top1: np.ndarray) -> dict[str, Any]:
    mean_ap = ap[has_pred].mean(axis=0) if has_pred.any() else np.full(len(IOU_THRESHOLDS), np.nan)
    m_ap = {str(t): pct(float(v)) for t, v in zip(IOU_THRESHOLDS, mean_ap, strict=True)}
    m_ap["average"] = pct(float(np.mean(mean_ap)))
    return {"MR-mAP": m_ap, "MR-R1": recall_at_one(top1, IOU_THRESHOLDS), "iou": top1}


def mr_metrics(pred: Windows, gt: Windows) -> dict[str, Any]:
    """`{"MR-mAP": {t: ..., "average": ...}, "MR-R1": {t: ...}}` for one length split, plus
    the first-window IoUs (key `iou`, an array) for the extra brief metrics."""
    pred = pred[:, :MAX_PRED_WINDOWS]
    gt, _ = pack_windows(gt)
    ap, top1 = grouped_mr(pred, gt)
    return _mr_summary(ap, pred.valid.any(axis=1), top1)


def length_split(gt: Windows, lo: float, hi: float) -> tuple[np.ndarray, Windows]:
    """Queries with a GT window of length in (lo, hi], and the GT restricted to those windows."""
    length = gt.se[..., 1] - gt.se[..., 0]
    keep = gt.valid & (length > lo) & (length <= hi)
    queries = keep.any(axis=1)
    return queries, gt.with_valid(keep)[queries]



def saliency_labels(gt: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
    """(Q, L, 3) annotator scores on the official clip grid and (Q,) its length per query.

    The grid has int(duration / 2) clips (floor, unlike `Query.n_clips`); a GT clip id
    beyond it is dropped (the official code would crash on it).
    """
    n = np.array([int(q.duration / CLIP_SECONDS) for q in gt], dtype=int)
    labels = np.zeros((len(gt), max(int(n.max(initial=0)), 1), 3))
    for i, q in enumerate(gt):
        if not q.saliency:
            continue
        ids = np.fromiter(q.saliency, dtype=int, count=len(q.saliency))
        scores = np.array(list(q.saliency.values()), dtype=float).reshape(len(ids), -1)[:, :3]
        ok = (ids >= 0) & (ids < n[i])
        labels[i, ids[ok], : scores.shape[1]] = scores[ok]
    return labels, n


def pad_scores(rows: Sequence[Sequence[float]], width: int, fill: float) -> np.ndarray:
    """Ragged score lists as (Q, width), cut or padded with `fill`."""
    out = np.full((len(rows), max(width, 1)), fill, dtype=float)
    for i, r in enumerate(rows):
        r = r[:width]
        out[i, : len(r)] = r
    return out


def highlight_hit1(pred_full: np.ndarray, positive: np.ndarray, n_clips: np.ndarray) -> float:
    """Fraction of queries whose top-scored clip is positive for at least one annotator.

    `pred_full` is the whole predicted list (-inf padded): argmax over it, as officially,
    and a top clip beyond the GT grid is a miss.
    """
    return float(np.mean(highlight_hits(pred_full, positive, n_clips)))


def highlight_hits(pred_full: np.ndarray, positive: np.ndarray, n_clips: np.ndarray) -> np.ndarray:
    """(Q,) 1.0 where the query's top-scored clip is positive (HL-Hit1 per query)."""
    top = np.argmax(pred_full, axis=1)
    inside = top < n_clips
    top_c = np.minimum(top, positive.shape[1] - 1)
    return positive[np.arange(len(top)), top_c].max(axis=-1) * inside


def highlight_ap(scores: np.ndarray, positive: np.ndarray, n_clips: np.ndarray) -> np.ndarray:
    """(Q, A) official highlight AP per query and annotator.

    `scores` (Q, L) are the predictions on the grid (zero-padded), `positive` (Q, L, A) the
    binary labels, `n_clips` (Q,) the grid length. Clips are ranked by score; each distinct
    score is one threshold (ties form one step). AP is the mean, over the distinct recall
    levels reached, of the best precision at that recall or higher: what `get_ap` computes
    from sklearn's precision_recall_curve. All-negative labels give 0, all-positive 1.
    """
    q, L = scores.shape
    valid = np.arange(L)[None, :] < n_clips[:, None]
    order = np.lexsort((-scores, ~valid), axis=-1)
    s = np.take_along_axis(scores, order, axis=1)
    # a threshold (a run of equal scores) ends where the next score differs or at the last clip
    differs = s[:, 1:] != s[:, :-1]
    true_col = np.ones((q, 1), dtype=bool)
    group_end = valid & (
        np.concatenate([differs, true_col], axis=1) | (np.arange(L) == n_clips[:, None] - 1)
    )
    group_start = valid & np.concatenate([true_col, differs], axis=1)

    lab = np.take_along_axis(positive, order[:, :, None], axis=1).transpose(0, 2, 1)  # (Q, A, L)
    tps = np.cumsum(lab, axis=-1)
    precision = np.where(group_end[:, None, :], tps / np.arange(1, L + 1), -np.inf)
    best_later = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]
    # hits before the current run of ties (nondecreasing, so a running max carries it forward);
    # a run reaches a new recall level iff it holds a positive
    prev_tps = np.maximum.accumulate(np.where(group_start[:, None, :], tps - lab, 0.0), axis=-1)
    new_level = group_end[:, None, :] & (tps > prev_tps)
    n_levels = new_level.sum(axis=-1)
    total = np.where(new_level, best_later, 0.0).sum(axis=-1)
    return np.divide(total, n_levels, out=np.zeros_like(total), where=n_levels > 0)


def highlight_metrics(
    gt: Sequence[Query], pred_saliency: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """`HL-min-{Fair,Good,VeryGood}` -> {HL-mAP, HL-Hit1}, over all queries."""
    labels, n_clips = saliency_labels(gt)
    lengths = np.array([len(r) for r in pred_saliency], dtype=int)
    scores = pad_scores(pred_saliency, max(int(lengths.max(initial=0)), 1), 0.0)
    return highlight_metrics_arrays(labels, n_clips, scores, lengths)


def highlight_metrics_arrays(labels: np.ndarray, n_clips: np.ndarray, scores: np.ndarray,
                             lengths: np.ndarray, per_query: PerQuery | None = None) -> dict[str, Any]:
    """`highlight_metrics` on arrays: `scores` (Q, T) predicted saliency, valid up to `lengths`."""
    width = labels.shape[1]
    cols = np.arange(max(width, scores.shape[1]))
    padded = np.zeros((scores.shape[0], cols.size))
    padded[:, : scores.shape[1]] = scores
    on_grid = np.where(cols[None, :width] < np.minimum(lengths, n_clips)[:, None], padded[:, :width], 0.0)
    full = np.where(cols[None, : scores.shape[1]] < lengths[:, None], scores, -np.inf)
    # one ranking serves every level: stack the levels' labels as extra "annotators"
    positive = np.concatenate([(labels >= m).astype(float) for _, m in HL_LEVELS], axis=2)
    ap = highlight_ap(on_grid, positive, n_clips).reshape(len(labels), len(HL_LEVELS), -1)
    out: dict[str, Any] = {}
    a = labels.shape[2]
    for k, (name, _) in enumerate(HL_LEVELS):
        level = positive[:, :, a * k : a * (k + 1)]
        out[f"HL-min-{name}"] = {
            "HL-mAP": pct(float(np.mean(ap[:, k]))),
            "HL-Hit1": pct(highlight_hit1(full, level, n_clips)),
        }
        if per_query is not None:
            every = np.ones(len(labels), dtype=bool)
            per_query[f"HL-min-{name}-mAP"] = (ap[:, k].mean(axis=-1), every)
            per_query[f"HL-min-{name}-Hit1"] = (highlight_hits(full, level, n_clips), every)
    return out


@dataclass(frozen=True)
class QVHGroundTruth:
    """Everything the evaluator needs of the ground truth, as arrays, built once per split."""

    queries: tuple[Query, ...]
    windows: Windows
    splits: dict[str, tuple[np.ndarray, Windows]]  # length range -> (queries kept, their packed GT)
    labels: np.ndarray | None  # (Q, L, 3) saliency on the official grid; None: no saliency
    n_clips: np.ndarray | None


def qvh_ground_truth(gt: Sequence[Query]) -> QVHGroundTruth:
    if not gt:
        raise DataError("no ground-truth queries to evaluate")
    missing_gt = [q.qid for q in gt if not q.windows]
    if missing_gt:
        raise DataError(
            f"{len(missing_gt)} queries have no GT windows (e.g. qid {missing_gt[:5]}): "
            "this split has no ground truth to evaluate against"
        )
    windows = Windows.from_lists([q.windows for q in gt])
    windows, _ = pack_windows(windows)
    splits = {}
    for name, (lo, hi) in LENGTH_RANGES.items():
        keep, sub = length_split(windows, lo, hi)
        splits[name] = (keep, pack_windows(sub)[0])
    labels, n_clips = saliency_labels(gt) if all(q.saliency is not None for q in gt) else (None, None)
    return QVHGroundTruth(tuple(gt), windows, splits, labels, n_clips)


def split_rows(g: QVHGroundTruth, pred: Windows, ap: np.ndarray, iou: np.ndarray
               ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per length split: (queries kept, their (Q, T) AP, their first-window IoU) against the
    split's GT windows. A query whose GT windows all fall in the split scores as in `full`
    (`ap`, `iou`: its row is reused); the others, of every split, are scored in one
    `grouped_mr` call (one call per split would pay its fixed cost three times a trial)."""
    n_gt = g.windows.valid.sum(axis=1)
    out, parts = {}, []
    for name, (keep, sub_gt) in g.splits.items():
        part = sub_gt.valid.sum(axis=1) != n_gt[keep]
        out[name] = (keep, ap[keep], iou[keep])
        if part.any():
            parts.append((name, part, np.flatnonzero(keep)[part], sub_gt[part]))
    if parts:
        width = max(sub.valid.shape[1] for *_, sub in parts)
        gt = Windows(*(np.concatenate([np.pad(getattr(sub, f), [(0, 0), (0, width - sub.valid.shape[1])]
                                              + [(0, 0)] * (getattr(sub, f).ndim - 2)) for *_, sub in parts])
                       for f in ("se", "valid", "score")))
        part_ap, part_iou = grouped_mr(pred[np.concatenate([rows for _, _, rows, _ in parts])], gt)
        start = 0
        for name, part, rows, _ in parts:
            _, split_ap, split_iou = out[name]
            split_ap[part], split_iou[part] = part_ap[start:start + rows.size], part_iou[start:start + rows.size]
            start += rows.size
    return out


def score_qvhighlights(g: QVHGroundTruth, pred: Windows, saliency: np.ndarray | None,
                       lengths: np.ndarray | None, highlights: bool = True,
                       per_query: PerQuery | None = None) -> dict[str, Any]:
    """The official metrics from arrays: `pred` (Q, W) windows with scores in file order,
    `saliency` (Q, T) valid up to `lengths` (None: the predictions have none). Highlight
    metrics only when `highlights` (a sweep that does not need them skips their cost).
    `per_query`, when given, receives each brief metric's per-query values and the queries
    it averages over (what `harness.eval.bootstrap` resamples)."""
    pred = pred[:, :MAX_PRED_WINDOWS]
    result: dict[str, Any] = {}
    ap, iou = grouped_mr(pred, g.windows)
    has_pred = pred.valid.any(axis=1)
    full = result["full"] = _mr_summary(ap, has_pred, iou)
    full.pop("iou")
    every = np.ones(len(iou), dtype=bool)
    if per_query is not None:
        for t in ("0.3", "0.5", "0.7"):
            per_query[f"MR-full-R1@{t}"] = ((iou >= float(t)).astype(float), every)
        per_query["MR-full-mIoU"] = (iou, every)
        per_query["MR-full-mAP"] = (ap.mean(axis=1), has_pred)
        per_query["MR-full-mAP@0.5"] = (ap[:, IOU_THRESHOLDS.index(0.5)], has_pred)
        per_query["MR-full-mAP@0.75"] = (ap[:, IOU_THRESHOLDS.index(0.75)], has_pred)
    for name, (keep, split_ap, split_iou) in split_rows(g, pred, ap, iou).items():
        split = _mr_summary(split_ap, has_pred[keep], split_iou)
        split.pop("iou")
        result[name] = split
        if per_query is not None:
            values = np.zeros(len(iou))
            values[keep] = split_ap.mean(axis=1)
            per_query[f"MR-{name}-mAP"] = (values, keep & has_pred)

    brief: dict[str, Any] = {
        "MR-full-R1@0.3": pct(float(np.mean(iou >= 0.3))),
        "MR-full-R1@0.5": full["MR-R1"]["0.5"],
        "MR-full-R1@0.7": full["MR-R1"]["0.7"],
        "MR-full-mAP": full["MR-mAP"]["average"],
        "MR-full-mAP@0.5": full["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": full["MR-mAP"]["0.75"],
        "MR-full-mIoU": pct(float(np.mean(iou))),
        "MR-long-mAP": result["long"]["MR-mAP"]["average"],
        "MR-middle-mAP": result["middle"]["MR-mAP"]["average"],
        "MR-short-mAP": result["short"]["MR-mAP"]["average"],
    }
    notes = []
    if not highlights:
        notes.append("highlight metrics (HL-*) not asked for")
    elif saliency is None or lengths is None:
        notes.append("no pred_saliency_scores in the predictions: highlight metrics (HL-*) skipped")
    elif g.labels is None or g.n_clips is None:
        notes.append("the ground truth has no saliency_scores: highlight metrics (HL-*) skipped")
    else:
        hl = highlight_metrics_arrays(g.labels, g.n_clips, saliency, lengths, per_query)
        result.update(hl)
        for level, values in hl.items():
            brief[f"{level}-mAP"] = values["HL-mAP"]
            brief[f"{level}-Hit1"] = values["HL-Hit1"]
    ordered = {"brief": brief, **dict(sorted(result.items()))}
    if notes:
        ordered["notes"] = notes
    return ordered


def evaluate_qvhighlights(
    gt: Sequence[Query], preds: Sequence[Mapping[str, Any]], per_query: PerQuery | None = None
) -> dict[str, Any]:
    """Every metric of the official QVHighlights evaluator, plus MR-full-R1@0.3 and mIoU."""
    g = qvh_ground_truth(gt)
    rows = align(gt, preds)
    pred = Windows.from_lists([r["pred_relevant_windows"] for r in rows], MAX_PRED_WINDOWS)
    saliency = [r.get("pred_saliency_scores") for r in rows]
    have = [s is not None for s in saliency]
    if any(have) and not all(have):
        lacking = [q.qid for q, h in zip(gt, have, strict=True) if not h]
        raise DataError(
            f"{len(lacking)} of {len(gt)} predictions lack pred_saliency_scores (e.g. qid "
            f"{lacking[:5]}): give them for every query or for none"
        )
    scores = lengths = None
    if all(have):
        lengths = np.array([len(s) for s in saliency], dtype=int)  # type: ignore[arg-type]
        scores = pad_scores(saliency, max(int(lengths.max(initial=0)), 1), 0.0)  # type: ignore[arg-type]
    return score_qvhighlights(g, pred, scores, lengths, per_query=per_query)


PROTOCOLS.register("qvhighlights")(
    Protocol("qvhighlights", evaluate_qvhighlights, BRIEF_KEYS, qvh_ground_truth, score_qvhighlights))
