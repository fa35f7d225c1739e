"""How much a sweep's winner owes to the queries it was chosen on: nested cross-validation.

A sweep picks the best of many trials on the queries it scores them on, so the winner's
value on those queries is optimistic: among many configs, one fits their noise. Nested
cross-validation measures by how much. The queries are split into K folds, grouped by video
(a video's queries stay in one fold: they share captions, and would leak between folds);
for each fold a search of its own runs on the other K-1 folds, picks its winner by the
sweep's rule, and that winner is scored on the held-out fold, which nothing in its search
saw. The held-out per-query values of the K folds, pooled, are the cross-validated estimate
of what the sweep's procedure gives on unseen queries (with a bootstrap interval over
queries); the winner's value on all queries minus it is the selection optimism.

Everything here is arithmetic on per-query arrays; `harness.runner.sweeps` runs the searches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from harness.config.sweep import Selection
from harness.eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, intervals
from harness.eval.protocols import PerQuery


def cv_folds(vids: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """The fold (0..k-1) of each query, given each query's video: the videos (in first-seen
    order) are shuffled with `seed` and dealt round-robin, so folds differ by at most one
    video and a video's queries share a fold."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    videos = list(dict.fromkeys(vids))
    if len(videos) < k:
        raise ValueError(f"{k} folds need at least {k} videos, got {len(videos)}")
    order = np.random.default_rng(seed).permutation(len(videos))
    fold_of = {videos[v]: i % k for i, v in enumerate(order)}
    return np.array([fold_of[v] for v in vids], dtype=np.int64)


def choose(trials: Iterable[tuple[int, Mapping[str, float]]], selection: Selection) -> int | None:
    """The number of the trial `selection` picks among (number, objective values); ties go to
    the earlier trial. None when no trial is eligible."""
    best: tuple[float, int] | None = None
    for number, values in trials:
        score = selection.score(values)
        if score is not None and (best is None or score > best[0] or (score == best[0] and number < best[1])):
            best = (score, number)
    return None if best is None else best[1]


def pool_held_out(n_queries: int, parts: Iterable[tuple[np.ndarray, PerQuery]]) -> PerQuery:
    """One `PerQuery` over all queries from each fold's held-out values: fold i's values sit
    at its query indices; a metric is pooled over the metrics every fold reported."""
    parts = list(parts)
    keys = set.intersection(*(set(pq) for _, pq in parts)) if parts else set()
    out: PerQuery = {}
    for key in sorted(keys):
        values = np.zeros(n_queries, dtype=np.float64)
        mask = np.zeros(n_queries, dtype=bool)
        for idx, pq in parts:
            v, m = pq[key]
            values[idx] = v
            mask[idx] = m
        out[key] = (values, mask)
    covered = np.zeros(n_queries, dtype=bool)
    for idx, _ in parts:
        covered[idx] = True
    if parts and not covered.all():
        raise ValueError(f"the folds' held-out queries cover {int(covered.sum())} of {n_queries}")
    return out


def summarize(pooled: PerQuery, best_on_all: Mapping[str, float], metrics: Sequence[str],
              n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """metric -> the cross-validated estimate, its 95 % interval, the best-on-all value and
    the selection optimism (best-on-all minus the estimate), for the sweep's objectives."""
    ci = intervals({m: pooled[m] for m in metrics if m in pooled}, n_resamples, seed)
    return {m: {"cv": round(iv.value, 2), "ci_low": round(iv.low, 2), "ci_high": round(iv.high, 2),
                "best_on_all": round(float(best_on_all[m]), 2),
                "optimism": round(float(best_on_all[m]) - iv.value, 2)}
            for m, iv in ci.items()}
