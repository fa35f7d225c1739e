"""How sure a number is: bootstrap confidence intervals and paired tests over queries.

Every brief metric is a mean of per-query values over a set of queries (the evaluators fill
a `PerQuery`: R1 is the mean of hit indicators, mAP the mean of per-query APs over queries
with a prediction, ...). Resampling the queries with replacement (`n_resamples` times,
seeded) gives the metric's sampling distribution: its 2.5th and 97.5th percentiles are the
95 % interval. Two systems scored on the same queries are compared on the same resamples:
the interval of the difference, and the two-sided bootstrap p-value
`min(1, 2 * min(P(diff* <= 0), P(diff* >= 0)))`: a difference that changes sign in many
resamples is not significant. All of it is whole-array arithmetic, in blocks of resamples
so that 17,000 queries x 1,000 resamples fit in memory.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.io import atomic_write_bytes
from harness.eval.protocols import PerQuery

DEFAULT_RESAMPLES = 1000
MAX_RESAMPLES = 20_000  # p-values down to 5e-5; the resample indices of 17,000 queries are then 1.4 GB
DEFAULT_SEED = 0
LEVEL = 0.95
ALPHA = 0.05
_BLOCK = 100  # resamples per block


@dataclass(frozen=True)
class Interval:
    value: float  # the metric on all queries (percent)
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class Comparison:
    """B - A on the same queries, in percentage points."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    p: float
    n_resamples: int

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def p_text(self) -> str:
        floor = 1.0 / self.n_resamples
        return f"< {floor:g}" if self.p < floor else f"{self.p:.3f}"


def resamples(n_queries: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(n_resamples, n_queries) query indices drawn with replacement, reproducible by seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_queries, size=(n_resamples, n_queries), dtype=np.int32)


def _means(values: np.ndarray, mask: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric (percent) on each resample: the mean of `values` over the masked queries."""
    out = np.empty(idx.shape[0])
    v = np.where(mask, values, 0.0)
    m = mask.astype(np.float64)
    for s in range(0, idx.shape[0], _BLOCK):
        block = idx[s : s + _BLOCK]
        num, den = v[block].sum(axis=1), m[block].sum(axis=1)
        out[s : s + _BLOCK] = 100.0 * np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)
    return out


def _point(values: np.ndarray, mask: np.ndarray) -> float:
    return float(100.0 * values[mask].mean()) if mask.any() else float("nan")


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return float(lo), float(hi)


def intervals(per_query: PerQuery, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
              level: float = LEVEL) -> dict[str, Interval]:
    """metric -> its value on all queries and its bootstrap interval."""
    n = _size(per_query)
    idx = resamples(n, n_resamples, seed)
    out = {}
    for key, (values, mask) in per_query.items():
        out[key] = Interval(_point(values, mask), *_bounds(_means(values, mask, idx), level))
    return out


def compare(a: PerQuery, b: PerQuery, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
            level: float = LEVEL) -> dict[str, Comparison]:
    """metric -> B - A with its interval and paired p-value (the same resamples for both)."""
    n = _size(a)
    if _size(b) != n:
        raise ValueError(f"a paired comparison needs the same queries: {n} vs {_size(b)}")
    idx = resamples(n, n_resamples, seed)
    out = {}
    for key in [k for k in a if k in b]:
        (va, ma), (vb, mb) = a[key], b[key]
        sa, sb = _means(va, ma, idx), _means(vb, mb, idx)
        d = sb - sa
        ok = np.isfinite(d)
        p = min(1.0, 2.0 * min(float(np.mean(d[ok] <= 0)), float(np.mean(d[ok] >= 0)))) if ok.any() else 1.0
        pa, pb = _point(va, ma), _point(vb, mb)
        out[key] = Comparison(pa, pb, pb - pa, *_bounds(d, level), p, n_resamples)
    return out


def _size(per_query: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> int:
    sizes = {len(v) for v, _ in per_query.values()}
    if len(sizes) != 1:
        raise ValueError(f"per-query arrays of different lengths: {sorted(sizes)}")
    return sizes.pop()


def save_per_query(path: Path, per_query: PerQuery, qids: Sequence[int] = (), fingerprint: str = "") -> None:
    """Per-query values and masks as one `.npz` (written atomically), with the query ids
    they are in the order of and the fingerprint of the cache they were computed from."""
    arrays: dict[str, np.ndarray] = {"meta:qids": np.asarray(qids, dtype=np.int64),
                                     "meta:fingerprint": np.array(fingerprint)}
    for key, (values, mask) in per_query.items():
        arrays[f"values:{key}"] = values
        arrays[f"mask:{key}"] = mask
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class SavedPerQuery:
    per_query: PerQuery
    qids: np.ndarray  # the queries, in the order of the arrays (empty: not recorded)
    fingerprint: str  # the cache the values were computed from ("" not recorded)


def read_per_query(path: Path) -> SavedPerQuery | None:
    """What `save_per_query` wrote; None for a file that is not one (damaged, truncated,
    written by an older version): the caller computes it again."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = [k[len("values:"):] for k in data.files if k.startswith("values:")]
            pq = {k: (data[f"values:{k}"], data[f"mask:{k}"].astype(bool)) for k in keys}
            qids = data["meta:qids"] if "meta:qids" in data.files else np.zeros(0, dtype=np.int64)
            fp = str(data["meta:fingerprint"]) if "meta:fingerprint" in data.files else ""
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return SavedPerQuery(pq, qids, fp)


def load_per_query(path: Path) -> PerQuery:
    saved = read_per_query(path)
    if saved is None:
        raise ValueError(f"{path}: not a per-query results file")
    return saved.per_query
