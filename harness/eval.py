"""Evaluators: QVHighlights (the official `standalone_eval` rules) and top-1 recall.

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

Charades-STA and ActivityNet-Captions: R1@{0.3,0.5,0.7} and mIoU of the first predicted
window over ALL queries (no prediction -> IoU 0), IoU in seconds, windows not clipped.

IoU with a zero-length union (a point window against the same point) is 0 here; the official
code would produce NaN. QVHighlights GT windows are never empty, so this never matters there.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import DataError, Query, iter_jsonl, load_dataset

IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
TOP1_THRESHOLDS = (0.3, 0.5, 0.7)
MAX_PRED_WINDOWS = 10  # official: mAP looks at the first 10 predicted windows only
LENGTH_RANGES = {"short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0)}
HL_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))
HL_CLIP_SECONDS = 2.0
PRED_FIELDS = ("qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores")


def pct(value: float) -> float:
    """Percent, rounded to two decimals the official way (`float(f"{100 * v:.2f}")`)."""
    return float(f"{100 * value:.2f}")


# --------------------------------------------------------------------------- padded arrays


@dataclass(frozen=True)
class Windows:
    """Ragged per-query windows as one padded array, so IoUs are computed for all at once.

    `se` is (Q, W, 2) start/end seconds, `valid` (Q, W) marks real windows, `score` (Q, W)
    the confidence (zeros for GT).
    """

    se: np.ndarray
    valid: np.ndarray
    score: np.ndarray

    @classmethod
    def from_lists(
        cls, rows: Sequence[Sequence[Sequence[float]]], width: int | None = None
    ) -> Windows:
        """Pad `rows` (per query: [[s, e(, score)], ...]) to `width` (default: the longest)."""
        n = len(rows)
        w = max((len(r) for r in rows), default=0) if width is None else width
        w = max(w, 1)
        se = np.zeros((n, w, 2))
        score = np.zeros((n, w))
        valid = np.zeros((n, w), dtype=bool)
        for i, r in enumerate(rows):
            r = r[:w]
            if not r:
                continue
            a = np.asarray(r, dtype=float)
            se[i, : len(r)] = a[:, :2]
            if a.shape[1] > 2:
                score[i, : len(r)] = a[:, 2]
            valid[i, : len(r)] = True
        return cls(se, valid, score)

    def __getitem__(self, idx: Any) -> Windows:
        return Windows(self.se[idx], self.valid[idx], self.score[idx])

    def with_valid(self, valid: np.ndarray) -> Windows:
        return Windows(self.se, valid, self.score)


def cross_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of every predicted window against every GT window of the same query.

    pred (Q, P, 2), gt (Q, G, 2) -> (Q, P, G). Union is len1 + len2 - inter, the official
    mAP formula, in the same operation order so that threshold ties resolve identically.
    """
    ps, pe = pred[:, :, None, 0], pred[:, :, None, 1]
    gs, ge = gt[:, None, :, 0], gt[:, None, :, 1]
    inter = np.clip(np.minimum(pe, ge) - np.maximum(ps, gs), 0, None)
    union = (pe - ps) + (ge - gs) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i] for (..., 2) arrays; the union is the hull, as in official R1.

    The hull equals the true union whenever the windows overlap, and the IoU is 0 otherwise.
    """
    inter = np.maximum(0, np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]))
    union = np.maximum(a[..., 1], b[..., 1]) - np.minimum(a[..., 0], b[..., 0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# --------------------------------------------------------------------------- moment retrieval


def first_window_iou(first: Windows, gt: Windows) -> np.ndarray:
    """(Q,) IoU of each query's first predicted window with the GT window it overlaps most.

    `first` holds one window per query (W == 1); no window -> 0. The GT window is chosen by
    the cross IoU (first one on ties) and the IoU then recomputed pairwise, as officially.
    """
    cross = cross_iou(first.se[:, :1], gt.se)[:, 0]  # (Q, G)
    cross = np.where(gt.valid, cross, -np.inf)
    best = np.argmax(cross, axis=1)
    chosen = np.take_along_axis(gt.se, best[:, None, None], axis=1)[:, 0]
    iou = paired_iou(first.se[:, 0], chosen)
    return np.where(first.valid[:, 0], iou, 0.0)


def recall_at_one(iou: np.ndarray, thresholds: Iterable[float]) -> dict[str, float]:
    """{str(t): percent of queries with IoU >= t}; NaN when there are no queries."""
    out = {}
    for t in thresholds:
        out[str(t)] = pct(float(np.mean(iou >= t))) if iou.size else math.nan
    return out


def sort_by_score(pred: Windows) -> Windows:
    """Windows of each query by decreasing score, stable (ties keep file order), pads last."""
    order = np.lexsort((-pred.score, ~pred.valid), axis=-1)
    return Windows(
        np.take_along_axis(pred.se, order[..., None], axis=1),
        np.take_along_axis(pred.valid, order, axis=1),
        np.take_along_axis(pred.score, order, axis=1),
    )


def greedy_true_positives(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(Q, T, P) bool: is prediction p a true positive at threshold t?

    `iou` (Q, P, G) with predictions in rank order and -1 for padding. Each prediction in turn
    takes the still-unmatched GT window of highest IoU, if that IoU >= t; among equal IoUs the
    later GT window wins, as in the official loop (stable ascending argsort, then reversed).
    """
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
    iou = cross_iou(ranked.se, gt.se)
    iou = np.where(ranked.valid[:, :, None] & gt.valid[:, None, :], iou, -1.0)
    tp = greedy_true_positives(iou, np.asarray(thresholds, dtype=float))
    return interpolated_ap(tp, ranked.valid, gt.valid.sum(axis=1).astype(float))


def mr_metrics(pred: Windows, gt: Windows) -> dict[str, Any]:
    """`{"MR-mAP": {t: ..., "average": ...}, "MR-R1": {t: ...}}` for one length split, plus
    the first-window IoUs (key `iou`, an array) for the extra brief metrics."""
    ap = mr_ap(pred, gt)
    has_pred = pred.valid.any(axis=1)
    mean_ap = ap[has_pred].mean(axis=0) if has_pred.any() else np.full(len(IOU_THRESHOLDS), np.nan)
    m_ap = {str(t): pct(float(v)) for t, v in zip(IOU_THRESHOLDS, mean_ap, strict=True)}
    m_ap["average"] = pct(float(np.mean(mean_ap)))
    iou = first_window_iou(pred[:, :1], gt)
    return {"MR-mAP": m_ap, "MR-R1": recall_at_one(iou, IOU_THRESHOLDS), "iou": iou}


def length_split(gt: Windows, lo: float, hi: float) -> tuple[np.ndarray, Windows]:
    """Queries with a GT window of length in (lo, hi], and the GT restricted to those windows."""
    length = gt.se[..., 1] - gt.se[..., 0]
    keep = gt.valid & (length > lo) & (length <= hi)
    queries = keep.any(axis=1)
    return queries, gt.with_valid(keep)[queries]


# --------------------------------------------------------------------------- highlights


def saliency_labels(gt: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
    """(Q, L, 3) annotator scores on the official clip grid and (Q,) its length per query.

    The grid has int(duration / 2) clips (floor, unlike `Query.n_clips`); a GT clip id
    beyond it is dropped (the official code would crash on it).
    """
    n = np.array([int(q.duration / HL_CLIP_SECONDS) for q in gt], dtype=int)
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
    top = np.argmax(pred_full, axis=1)
    inside = top < n_clips
    top_c = np.minimum(top, positive.shape[1] - 1)
    hit = positive[np.arange(len(top)), top_c].max(axis=-1) * inside
    return float(np.mean(hit))


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
    width = labels.shape[1]
    on_grid = pad_scores(
        [r[: int(n)] for r, n in zip(pred_saliency, n_clips, strict=True)], width, 0.0
    )
    full = pad_scores(pred_saliency, max((len(r) for r in pred_saliency), default=1), -np.inf)
    # one ranking serves every level: stack the levels' labels as extra "annotators"
    positive = np.concatenate([(labels >= m).astype(float) for _, m in HL_LEVELS], axis=2)
    ap = highlight_ap(on_grid, positive, n_clips).reshape(len(gt), len(HL_LEVELS), -1)
    out: dict[str, Any] = {}
    a = labels.shape[2]
    for k, (name, _) in enumerate(HL_LEVELS):
        level = positive[:, :, a * k : a * (k + 1)]
        out[f"HL-min-{name}"] = {
            "HL-mAP": pct(float(np.mean(ap[:, k]))),
            "HL-Hit1": pct(highlight_hit1(full, level, n_clips)),
        }
    return out


# --------------------------------------------------------------------------- evaluators


def align(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Predictions in GT order; ids must match exactly (see `check_prediction_ids`)."""
    check_prediction_ids(gt, preds)
    by_qid = {p["qid"]: p for p in preds}
    return [by_qid[q.qid] for q in gt]


def evaluate_qvhighlights(
    gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Every metric of the official QVHighlights evaluator, plus MR-full-R1@0.3 and mIoU."""
    if not gt:
        raise DataError("no ground-truth queries to evaluate")
    missing_gt = [q.qid for q in gt if not q.windows]
    if missing_gt:
        raise DataError(
            f"{len(missing_gt)} queries have no GT windows (e.g. qid {missing_gt[:5]}): "
            "this split has no ground truth to evaluate against"
        )
    rows = align(gt, preds)
    pred = Windows.from_lists([r["pred_relevant_windows"] for r in rows], MAX_PRED_WINDOWS)
    gt_w = Windows.from_lists([q.windows for q in gt])

    result: dict[str, Any] = {}
    full = mr_metrics(pred, gt_w)
    iou = full.pop("iou")
    result["full"] = full
    for name, (lo, hi) in LENGTH_RANGES.items():
        keep, sub_gt = length_split(gt_w, lo, hi)
        split = mr_metrics(pred[keep], sub_gt)
        split.pop("iou")
        result[name] = split

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
    saliency = [r.get("pred_saliency_scores") for r in rows]
    have = [s is not None for s in saliency]
    if not any(have):
        notes.append("no pred_saliency_scores in the predictions: highlight metrics (HL-*) skipped")
    elif not all(have):
        lacking = [q.qid for q, h in zip(gt, have, strict=True) if not h]
        raise DataError(
            f"{len(lacking)} of {len(gt)} predictions lack pred_saliency_scores (e.g. qid "
            f"{lacking[:5]}): give them for every query or for none"
        )
    elif any(q.saliency is None for q in gt):
        notes.append("the ground truth has no saliency_scores: highlight metrics (HL-*) skipped")
    else:
        hl = highlight_metrics(gt, saliency)  # type: ignore[arg-type]
        result.update(hl)
        for level, values in hl.items():
            brief[f"{level}-mAP"] = values["HL-mAP"]
            brief[f"{level}-Hit1"] = values["HL-Hit1"]
    ordered = {"brief": brief, **dict(sorted(result.items()))}
    if notes:
        ordered["notes"] = notes
    return ordered


def evaluate_top1(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Charades-STA / ActivityNet: R1@{0.3,0.5,0.7} and mIoU of the first window, all queries."""
    if not gt:
        raise DataError("no ground-truth queries to evaluate")
    rows = align(gt, preds)
    first = Windows.from_lists([r["pred_relevant_windows"][:1] for r in rows], 1)
    iou = first_window_iou(first, Windows.from_lists([q.windows for q in gt]))
    brief = {f"R1@{t}": pct(float(np.mean(iou >= t))) for t in TOP1_THRESHOLDS}
    brief["mIoU"] = pct(float(np.mean(iou)))
    return {
        "brief": brief,
        "n_queries": len(gt),
        "n_without_prediction": int((~first.valid[:, 0]).sum()),
    }


# evaluation protocol per dataset family; the demo mimics QVHighlights (clips, saliency)
PROTOCOLS: dict[str, Any] = {
    "qvhighlights": evaluate_qvhighlights,
    "demo": evaluate_qvhighlights,
    "charades_sta": evaluate_top1,
    "activitynet": evaluate_top1,
}


def evaluate(dataset_name: str, gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Score predictions with the protocol of `dataset_name`'s family (QVHighlights or top-1)."""
    family = dataset_name.split(":", 1)[0]
    if family not in PROTOCOLS:
        raise DataError(
            f"no evaluation protocol for dataset {dataset_name!r}; known families: {', '.join(sorted(PROTOCOLS))}"
        )
    return PROTOCOLS[family](gt, preds)


def top1_ious(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """IoU of each query's first predicted window with its best GT window (0: no window)."""
    rows = align(gt, preds)
    first = Windows.from_lists([r["pred_relevant_windows"][:1] for r in rows], 1)
    return first_window_iou(first, Windows.from_lists([q.windows for q in gt]))


# --------------------------------------------------------------------------- prediction files


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def parse_prediction_row(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check one official-format prediction row; the error names `where` and the field."""
    qid = obj.get("qid")
    if not isinstance(qid, int) or isinstance(qid, bool):
        got = "nothing" if "qid" not in obj else repr(qid)
        raise DataError(f"{where}: field 'qid' should be an integer query id, got {got:.60}")
    for key in ("query", "vid"):
        if key in obj and not isinstance(obj[key], str):
            raise DataError(f"{where}: field {key!r} should be a string, got {obj[key]!r:.60}")
    if "pred_relevant_windows" not in obj:
        raise DataError(
            f"{where}: missing field 'pred_relevant_windows' (a list of [start, end, score])"
        )
    windows = obj["pred_relevant_windows"]
    if not isinstance(windows, list):
        raise DataError(
            f"{where}: field 'pred_relevant_windows' should be a list of [start, end, score]"
        )
    clean = []
    for k, w in enumerate(windows):
        if not isinstance(w, list | tuple) or len(w) != 3 or not all(_is_number(x) for x in w):
            raise DataError(
                f"{where}: pred_relevant_windows[{k}] is {w!r:.60}, expected [start, end, score] "
                "as finite numbers"
            )
        if w[1] < w[0]:
            raise DataError(f"{where}: pred_relevant_windows[{k}] = {w!r} ends before it starts")
        clean.append([float(w[0]), float(w[1]), float(w[2])])
    row: dict[str, Any] = {"qid": qid, "pred_relevant_windows": clean}
    for key in ("query", "vid"):
        if key in obj:
            row[key] = obj[key]
    if "pred_saliency_scores" in obj:
        sal = obj["pred_saliency_scores"]
        if not isinstance(sal, list) or not sal or not all(_is_number(x) for x in sal):
            raise DataError(
                f"{where}: field 'pred_saliency_scores' should be a non-empty list of finite "
                "numbers, one per 2-s clip"
            )
        row["pred_saliency_scores"] = [float(x) for x in sal]
    return row


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read an official-format prediction jsonl, checking every line; ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prediction file {path} not found")
    rows: list[dict[str, Any]] = []
    first_line: dict[int, int] = {}
    for lineno, obj in iter_jsonl(path):
        row = parse_prediction_row(obj, f"{path}:{lineno}")
        if row["qid"] in first_line:
            raise DataError(
                f"{path}:{lineno}: qid {row['qid']} already predicted on line {first_line[row['qid']]}"
            )
        first_line[row["qid"]] = lineno
        rows.append(row)
    return rows


def check_prediction_ids(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> None:
    """Fail unless the predictions cover exactly the GT query ids (as the official evaluator).

    A partial file would otherwise score as if the missing queries did not exist.
    """
    gt_ids = [q.qid for q in gt]
    pred_ids = [p["qid"] for p in preds]
    gt_set, pred_set = set(gt_ids), set(pred_ids)
    problems = []
    if len(pred_set) != len(pred_ids):
        dup = sorted(k for k, n in Counter(pred_ids).items() if n > 1)
        problems.append(f"{len(dup)} ids predicted more than once (e.g. {dup[:5]})")
    missing = [i for i in gt_ids if i not in pred_set]
    extra = [i for i in pred_ids if i not in gt_set]
    if missing:
        problems.append(
            f"{len(missing)} of {len(gt_ids)} GT query ids have no prediction (e.g. {missing[:5]})"
        )
    if extra:
        problems.append(
            f"{len(extra)} predicted ids are not in the ground truth (e.g. {extra[:5]})"
        )
    if problems:
        raise DataError("predictions do not match the ground truth: " + "; ".join(problems))


def write_predictions(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as official-format jsonl, atomically (a crashed run leaves no half file)."""
    from harness.cache import atomic_write_text

    lines = []
    for row in rows:
        out = {k: row[k] for k in PRED_FIELDS if k in row}
        out.update({k: v for k, v in row.items() if k not in out})
        lines.append(json.dumps(out, ensure_ascii=False))
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


# --------------------------------------------------------------------------- command line


def format_table(result: Mapping[str, Any]) -> str:
    """The `brief` metrics as an aligned two-column table, plus any notes."""
    brief = result.get("brief", {})
    width = max((len(k) for k in brief), default=6)
    lines = [f"{'metric':<{width}}  {'value':>7}"]
    lines += [f"{k:<{width}}  {v:>7.2f}" for k, v in brief.items()]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root)
    preds = load_predictions(args.pred)
    result = evaluate(args.dataset, dataset.queries, preds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"dataset: {args.dataset} ({len(dataset)} queries)   predictions: {args.pred}")
        print(format_table(result))
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    p = top.add_parser("eval", help="score a prediction jsonl against a dataset's ground truth")
    p.add_argument("--dataset", required=True, help="registered split, e.g. qvhighlights:val")
    p.add_argument(
        "--pred", required=True, help="predictions in the official QVHighlights jsonl format"
    )
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.add_argument(
        "--data-root", default=None, help="benchmark data folder (default: $GRANALIGN_DATA)"
    )
    p.set_defaults(func=cmd_eval)
