"""Windows as padded arrays and the IoUs every protocol shares, computed for all queries at
once (a sweep scores thousands of configurations)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def pct(value: float) -> float:
    """Percent, rounded to two decimals the official way (`float(f"{100 * v:.2f}")`)."""
    return float(f"{100 * value:.2f}")



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
