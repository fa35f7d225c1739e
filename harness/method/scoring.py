"""Frame scores (Eq. 1): pairings of query and caption granularities, normalisations.

Pure functions on padded arrays. A *pair* `(x, C)` is a query kind (`q`, `qs`, `qd`,
`qp`) and a caption kind (`Ca`, `Cq`); a *pairing* is a list of pairs. For each pair the
cache reader provides raw cosine similarities `(Q, m_x, T_max)` (NaN past each video's
length), and the functions here turn them into normalised scores, variant curves `S^j`
and the mean curve `S` of Eq. 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from harness.core.registries import NORMALISATIONS, PAIRINGS, SMOOTHERS
from harness.method.kinds import Pair, caption_kind_names, query_kind_names

# what a frame without an aware caption scores for a Cq pair: its agnostic caption, or 0
CQ_FALLBACKS = ("ca", "zero")


# -- pairings ------------------------------------------------------------------------------

def register_pairing(name: str, pairs: Sequence[Pair]) -> None:
    pairs = tuple((str(x), str(c)) for x, c in pairs)
    check_pairs(pairs, name)
    PAIRINGS.register(name)(pairs)


def check_pairs(pairs: Sequence[Pair], where: str = "pairing") -> None:
    if not pairs:
        raise ValueError(f"{where}: a pairing needs at least one (query kind, caption kind) pair")
    queries, captions = query_kind_names(), caption_kind_names()
    for x, c in pairs:
        if x not in queries or c not in captions:
            raise ValueError(
                f"{where}: pair ({x!r}, {c!r}) is not (query kind, caption kind); query kinds: "
                f"{', '.join(queries)}; caption kinds: {', '.join(captions)}"
            )


for _x in query_kind_names():
    for _c in caption_kind_names():
        register_pairing(f"{_x}-{_c}", [(_x, _c)])
for _a in ("Ca", "Cq"):
    for _b in ("Ca", "Cq"):
        register_pairing(f"qs-{_a}+qd-{_b}", [("qs", _a), ("qd", _b)])
PAIRINGS.register("granalign")(PAIRINGS.get("qs-Ca+qd-Cq"))


def resolve_pairing(pairing: str | Sequence[Sequence[str]]) -> tuple[Pair, ...]:
    """A registered name (`granalign`, `q-Ca`, `qs-Ca+qd-Cq`) or a literal list of pairs.

    Names joined by `+` combine registered pairings (`q-Ca+qp-Ca`)."""
    if isinstance(pairing, str):
        if pairing in PAIRINGS:
            return PAIRINGS.get(pairing)
        parts = pairing.split("+")
        if len(parts) > 1:
            return tuple(p for part in parts for p in PAIRINGS.get(part))
        return PAIRINGS.get(pairing)  # raises with the valid names
    pairs = tuple((str(x), str(c)) for x, c in pairing)
    check_pairs(pairs)
    return pairs


# -- normalisations -----------------------------------------------------------------------
Normalisation = Callable[[np.ndarray], np.ndarray]


@NORMALISATIONS.register("minmax")
def minmax(sims: np.ndarray) -> np.ndarray:
    """Min-max over the frames of one video for one variant (VTG-GPT's rule).

    A constant curve carries no ranking information; it becomes all ones, so the MPG
    proposes the whole video rather than nothing."""
    lo = np.nanmin(sims, axis=-1, keepdims=True)
    hi = np.nanmax(sims, axis=-1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (sims - lo) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(np.isnan(sims), np.nan, out)


@NORMALISATIONS.register("shift")
def shift(sims: np.ndarray) -> np.ndarray:
    """(cos + 1) / 2: keeps absolute similarity, maps [-1, 1] onto [0, 1]."""
    return (sims + 1.0) / 2.0


@NORMALISATIONS.register("raw")
def raw(sims: np.ndarray) -> np.ndarray:
    """Raw cosine, clipped at 0 so the MPG's [0, 1] histogram still applies."""
    return np.clip(sims, 0.0, 1.0)


def _nanmean_allnan(a: np.ndarray, axis: int) -> np.ndarray:
    """nanmean that returns NaN quietly where every value is NaN (padding)."""
    valid = ~np.isnan(a)
    total = np.where(valid, a, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def candidate_mask(aware_rank: np.ndarray, n_frames: np.ndarray, K: float) -> np.ndarray:
    """(Q, T_max) True for each query's top-K% frames by the frame filter's ranking.

    `aware_rank[q, i]` is frame i's rank among the frames that have an aware caption
    (0 = best), a large number for frames without one."""
    n_cand = np.maximum(1, np.ceil(n_frames * (K / 100.0) - 1e-9)).astype(np.int64)
    return aware_rank < n_cand[:, None]


def pair_scores(
    kind: str,
    sims_ca: np.ndarray | None,
    sims_cq: np.ndarray | None,
    candidates: np.ndarray | None,
    normalise: Normalisation,
    cq_fallback: str = "ca",
) -> np.ndarray:
    """Normalised g(x_j, C_i) for one pair, `(Q, m_x, T_max)`.

    For `Cq`, a frame outside the candidates takes its agnostic caption's similarity
    (`cq_fallback='ca'`, the default) or a score of 0 (`'zero'`)."""
    if kind == "Ca":
        assert sims_ca is not None
        return normalise(sims_ca)
    assert sims_cq is not None and candidates is not None
    cand = candidates[:, None, :]
    if cq_fallback == "ca":
        assert sims_ca is not None
        return normalise(np.where(cand, sims_cq, sims_ca))
    if cq_fallback == "zero":
        only = normalise(np.where(cand, sims_cq, np.nan))
        valid = ~np.isnan(sims_cq) | ~cand  # keep padding NaN
        pad = np.isnan(sims_ca) if sims_ca is not None else np.zeros_like(cand, dtype=bool)
        return np.where(cand & valid, only, np.where(pad, np.nan, 0.0))
    raise ValueError(f"cq_fallback must be 'ca' or 'zero', got {cq_fallback!r}")


def variant_curves(per_pair: Sequence[np.ndarray]) -> np.ndarray:
    """S^j: the mean over the pairing's pairs of g(x_j, C_i), `(Q, m_eff, T_max)`.

    A pair with one variant (`q`) is broadcast across the others' m variants."""
    m_eff = max(p.shape[1] for p in per_pair)
    stacked = np.stack([np.broadcast_to(p, (p.shape[0], m_eff, p.shape[2])) for p in per_pair])
    return _nanmean_allnan(stacked, axis=0)


def frame_scores(variants: np.ndarray) -> np.ndarray:
    """Eq. 1: S_i, the mean over pairs and variants, `(Q, T_max)`."""
    return _nanmean_allnan(variants, axis=1)


# -- temporal context (not the paper's) -------------------------------------------------------
@SMOOTHERS.register("none")
def no_smoothing(scores: np.ndarray, window: int) -> np.ndarray:
    """The paper's: each frame scored on its own."""
    return scores


@SMOOTHERS.register("box")
def box_smoothing(scores: np.ndarray, window: int) -> np.ndarray:
    """NOT THE PAPER'S: each frame's score the mean of the frames at most `window` away
    (within the video: NaN padding and NaN frames are neither read nor filled).

    Why: a caption describes one frame; the moment a query names spans several, and a
    frame whose neighbours match is more likely inside it than an isolated match."""
    valid = ~np.isnan(scores)
    pad = [(0, 0)] * (scores.ndim - 1) + [(1, 0)]
    total = np.cumsum(np.pad(np.where(valid, scores, 0.0), pad), axis=-1)
    count = np.cumsum(np.pad(valid.astype(np.float64), pad), axis=-1)
    t = scores.shape[-1]
    i = np.arange(t)
    lo, hi = np.clip(i - window, 0, t), np.clip(i + window + 1, 0, t)
    sums, counts = total[..., hi] - total[..., lo], count[..., hi] - count[..., lo]
    return np.where(valid, sums / np.maximum(counts, 1.0), np.nan).astype(scores.dtype, copy=False)
