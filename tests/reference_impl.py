"""The per-query implementation of pooling, temporal NMS and prediction rows that the
vectorised trial replaced (harness at commit 9304e55), kept as the reference the fast
path must equal on random and real inputs (tests/test_fast_trial.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.core.registries import RECIPES
from harness.method.proposals import moment_proposals
from harness.method.sources import Prepared

CLIP = 2.0


def interval_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = np.clip(
        np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def temporal_nms(intervals: np.ndarray, scores: np.ndarray, tau: float, max_keep: int | None = None) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    if order.size == 0:
        return order
    iou = interval_iou(intervals[order], intervals[order])
    alive = np.ones(order.size, dtype=bool)
    keep = []
    for i in range(order.size):
        if not alive[i]:
            continue
        keep.append(order[i])
        if max_keep is not None and len(keep) >= max_keep:
            break
        alive[i + 1 :] &= iou[i, i + 1 :] < tau
    return np.asarray(keep, dtype=np.int64)


def reference_rows(prep: Prepared, cfg: Any) -> list[dict[str, Any]]:
    """The official prediction rows, computed query by query as the harness did before."""
    recipe = RECIPES.get(cfg.recipe)()
    curves = recipe.curves(prep, cfg)
    spans = moment_proposals(curves.values, recipe.mpg_params(cfg))
    owner = curves.owner[spans.curve]
    order = np.lexsort((-spans.score, owner))
    bounds = np.searchsorted(owner[order], np.arange(len(prep.queries) + 1))
    rows = []
    for qi, q in enumerate(prep.queries):
        idx = order[bounds[qi] : bounds[qi + 1]]
        first = spans.first[idx].astype(np.float64)
        last = spans.last[idx].astype(np.float64)
        score = spans.score[idx]
        ends = last if recipe.nms_closed_index else last + 1.0
        keep = temporal_nms(np.stack([first, ends], axis=1), score, cfg.tau, cfg.max_windows)
        win = np.clip(np.stack([first[keep] * CLIP, (last[keep] + 1.0) * CLIP], axis=1), 0.0, q.duration)
        sal = curves.saliency[qi, : int(prep.n_frames[qi])]
        windows = np.column_stack([np.round(win, 4), np.round(score[keep], 6)]) if keep.size else []
        rows.append({
            "qid": q.qid, "query": q.query, "vid": q.vid,
            "pred_relevant_windows": windows.tolist() if len(windows) else [],
            "pred_saliency_scores": np.round(np.nan_to_num(sal), 6).tolist(),
        })
    return rows
