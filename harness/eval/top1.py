"""The top-1 protocol of Charades-STA and ActivityNet-Captions: R1@{0.3,0.5,0.7} and mIoU of
the first predicted window over ALL queries (no prediction -> IoU 0), IoU in seconds,
windows not clipped to the video's duration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.core.errors import DataError
from harness.core.query import Query
from harness.core.registries import PROTOCOLS
from harness.eval.predictions import align
from harness.eval.protocols import PerQuery, Protocol
from harness.eval.windows import Windows, first_window_iou, pct

TOP1_THRESHOLDS = (0.3, 0.5, 0.7)
BRIEF_KEYS = (*(f"R1@{t}" for t in TOP1_THRESHOLDS), "mIoU")


def first_windows(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> Windows:
    """Each query's first predicted window (none: an invalid slot), in GT order."""
    rows = align(gt, preds)
    return Windows.from_lists([r["pred_relevant_windows"][:1] for r in rows], 1)


def top1_ious(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """IoU of each query's first predicted window with its best GT window (0: no window)."""
    return first_window_iou(first_windows(gt, preds), Windows.from_lists([q.windows for q in gt]))


def top1_ground_truth(gt: Sequence[Query]) -> Windows:
    if not gt:
        raise DataError("no ground-truth queries to evaluate")
    missing_gt = [q.qid for q in gt if not q.windows]
    if missing_gt:
        raise DataError(f"{len(missing_gt)} queries have no GT windows (e.g. qid {missing_gt[:5]})")
    return Windows.from_lists([q.windows for q in gt])


def evaluate_top1(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]],
                  per_query: PerQuery | None = None) -> dict[str, Any]:
    """Charades-STA / ActivityNet: R1@{0.3,0.5,0.7} and mIoU of the first window, all queries."""
    return score_top1(top1_ground_truth(gt), first_windows(gt, preds), per_query=per_query)


def score_top1(g: Windows, pred: Windows, saliency: Any = None, lengths: Any = None,
               highlights: bool = False, per_query: PerQuery | None = None) -> dict[str, Any]:
    """The top-1 metrics from arrays (saliency is not part of this protocol)."""
    first = pred[:, :1]
    iou = first_window_iou(first, g)
    if per_query is not None:
        every = np.ones(len(iou), dtype=bool)
        per_query.update({f"R1@{t}": ((iou >= t).astype(float), every) for t in TOP1_THRESHOLDS})
        per_query["mIoU"] = (iou, every)
    brief = {f"R1@{t}": pct(float(np.mean(iou >= t))) for t in TOP1_THRESHOLDS}
    brief["mIoU"] = pct(float(np.mean(iou)))
    return {
        "brief": brief,
        "n_queries": len(iou),
        "n_without_prediction": int((~first.valid[:, 0]).sum()),
    }


PROTOCOLS.register("top1")(Protocol("top1", evaluate_top1, BRIEF_KEYS, top1_ground_truth, score_top1))
