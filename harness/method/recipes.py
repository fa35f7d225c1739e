"""Recipes: how score curves become ranked windows. GranAlign's and VTG-GPT's.

A recipe turns prepared similarities into (a) the batch of curves the MPG runs on, each
owned by one query, and (b) the per-clip saliency curve; then every recipe shares the MPG,
pooling, NMS and the conversion to seconds. Registering a new recipe is one class and one
decorator; configs select it by name (`recipe: vtg-gpt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from harness.core.constants import CLIP_SECONDS
from harness.core.query import Query
from harness.core.registries import NORMALISATIONS, RECIPES, SMOOTHERS
from harness.method.kinds import Pair
from harness.method.proposals import CurveBatch, MPGParams, batched_nms, moment_proposals
from harness.method.scoring import (
    candidate_mask,
    frame_scores,
    pair_scores,
    resolve_pairing,
    variant_curves,
)
from harness.method.sources import Prepared

# which curves the MPG runs on: every variant curve S^j and the mean curve S, or S alone
PROPOSAL_SOURCES = ("variants+mean", "mean")


@dataclass
class Curves:
    values: np.ndarray  # (N, T_max), NaN padded
    owner: np.ndarray  # (N,) query index
    saliency: np.ndarray  # (Q, T_max)

    def __post_init__(self) -> None:
        self.batch = CurveBatch(self.values)  # what the MPG derives from the curves alone, kept


def fused_sims(prep: Prepared, pair: Pair, lexical_weight: float) -> np.ndarray | None:
    """A pair's raw similarities: the sentence-embedding cosine, fused with the lemma-bag
    cosine as `(1 - w) * semantic + w * lexical` where a run asks for it (NOT THE PAPER'S:
    `harness.cache.lexical`)."""
    sims = prep.sims.get(pair)
    if sims is None or lexical_weight == 0.0:
        return sims
    if prep.lexical is None or pair not in prep.lexical:
        raise ValueError("lexical_weight > 0 needs the lemma-bag similarities: the run's inputs "
                         "were prepared without them")
    return ((1.0 - lexical_weight) * sims + lexical_weight * prep.lexical[pair]).astype(np.float32)


class Recipe:
    """GranAlign: Eq. 1 curves, the MPG on variant and mean curves, Eq. 2, NMS on seconds."""

    nms_closed_index = False  # True: IoU on [first, last] indices (VTG-GPT), else on time
    # the config's method fields this recipe does not read: the config hash leaves them out,
    # so two configs that differ only there are one computation
    ignores: ClassVar[frozenset[str]] = frozenset()

    def pairs(self, cfg: Any) -> tuple[Pair, ...]:
        return resolve_pairing(cfg.pairing)

    def curve_key(self, cfg: Any) -> tuple[Any, ...]:
        """What `curves` reads: the pairs and the config's `curve` fields (trials that agree
        on them share one set of curves)."""
        curve = {k: v for k, v in cfg.values("curve").items() if k != "pairing" and k not in self.ignores}
        return (type(self).__name__, self.pairs(cfg), tuple(sorted(curve.items())))

    def pair_scores(self, prep: Prepared, cfg: Any) -> list[np.ndarray]:
        """Normalised g(x_j, C_i) per pair, `(Q, m_x, T_max)`, first m variants."""
        normalise = NORMALISATIONS.get(cfg.normalisation)
        cand = None
        if prep.aware_rank is not None:
            cand = candidate_mask(prep.aware_rank, prep.n_frames, cfg.K)
        smooth = SMOOTHERS.get(cfg.smooth)
        out = []
        for x, c in self.pairs(cfg):
            m = 1 if x == "q" else cfg.m
            ca, cq = (fused_sims(prep, (x, kind), cfg.lexical_weight) for kind in ("Ca", "Cq"))
            ca = ca[:, :m] if ca is not None else None
            cq = cq[:, :m] if cq is not None else None
            out.append(smooth(pair_scores(c, ca, cq, cand, normalise, cfg.cq_fallback), cfg.smooth_window))
        return out

    def curves(self, prep: Prepared, cfg: Any) -> Curves:
        variants = variant_curves(self.pair_scores(prep, cfg))
        mean = frame_scores(variants)
        nq, m_eff, t = variants.shape
        if cfg.proposals_from == "variants+mean" and m_eff > 1:
            values = np.concatenate([variants.reshape(nq * m_eff, t), mean], axis=0)
            owner = np.concatenate([np.repeat(np.arange(nq), m_eff), np.arange(nq)])
        elif cfg.proposals_from in ("mean", "variants+mean"):
            values, owner = mean, np.arange(nq)
        else:
            raise ValueError(f"proposals_from must be 'variants+mean' or 'mean', got {cfg.proposals_from!r}")
        return Curves(values, owner, mean)

    def mpg_params(self, cfg: Any) -> MPGParams:
        return MPGParams(**cfg.values("mpg"))


RECIPES.register("granalign")(Recipe)


@RECIPES.register("vtg-gpt")
class VTGGPT(Recipe):
    """VTG-GPT: a curve per query variant, pooled proposals, no pruning, NMS on indices.

    The published VTG-GPT baseline: one curve per query variant (the query and each
    paraphrase, each min-max normalised), proposals from each and pooled, span score
    0.5 * mean over selected frames + 0.5 * length share (`span_score: selected`,
    `lam: 0.5`), no pruning, NMS at 0.95 with IoU on [first, last] frame indices as in its
    code; saliency is the mean normalised score over all variants."""

    nms_closed_index = True
    ignores = frozenset({"prune", "n", "span_score", "proposals_from"})

    def curves(self, prep: Prepared, cfg: Any) -> Curves:
        per_pair = self.pair_scores(prep, cfg)
        allv = np.concatenate(per_pair, axis=1)  # (Q, sum m_x, T)
        nq, nv, t = allv.shape
        return Curves(allv.reshape(nq * nv, t), np.repeat(np.arange(nq), nv), frame_scores(allv))

    def mpg_params(self, cfg: Any) -> MPGParams:
        return replace(super().mpg_params(cfg), n=0.0, prune="none", span_score="selected")


@dataclass(frozen=True)
class Predictions:
    """Every query's windows (best first, at most `max_windows`) and saliency, as arrays.

    `windows` (Q, W, 2) seconds clipped to the duration, `scores` (Q, W), `valid` (Q, W);
    `saliency` (Q, T_max) is the per-clip curve, NaN past each video's `n_frames`. A trial
    evaluates these arrays directly; `rows` builds the official jsonl rows only when a file
    is written.
    """

    windows: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    saliency: np.ndarray
    n_frames: np.ndarray

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def as_written(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Windows, scores and saliency as a prediction file holds them (rounded to 4 and 6
        decimals, NaN saliency as 0): evaluating these equals evaluating the file."""
        sal = np.round(np.nan_to_num(self.saliency), 6)
        return np.round(self.windows, 4), np.round(self.scores, 6), sal

    def rows(self, queries: Sequence[Query]) -> list[dict[str, Any]]:
        """The official QVHighlights prediction jsonl rows."""
        windows, scores, sal = self.as_written()
        out = []
        for i, q in enumerate(queries):
            k = int(self.valid[i].sum())
            out.append({
                "qid": q.qid,
                "query": q.query,
                "vid": q.vid,
                "pred_relevant_windows": np.column_stack([windows[i, :k], scores[i, :k]]).tolist(),
                "pred_saliency_scores": sal[i, : int(self.n_frames[i])].tolist(),
            })
        return out


def predict(prep: Prepared, cfg: Any) -> Predictions:
    """Windows (seconds, best first, at most `max_windows`) and saliency for every query."""
    recipe = RECIPES.get(cfg.recipe)()
    # a sweep varies the MPG far more often than the pairing: curves are made once per key
    curves = prep.memo(("curves", recipe.curve_key(cfg)), lambda: recipe.curves(prep, cfg))
    spans = moment_proposals(curves.batch, recipe.mpg_params(cfg))
    owner = curves.owner[spans.curve]
    ends = spans.last if recipe.nms_closed_index else spans.last + 1
    idx, valid = batched_nms(owner, spans.first, ends, spans.score, len(prep.queries), cfg.tau, cfg.max_windows)
    safe = np.where(valid, idx, len(spans))  # padding reads the sentinel appended below
    first = np.append(spans.first, 0)[safe].astype(np.float64)
    last = np.append(spans.last, 0)[safe].astype(np.float64)
    windows = np.stack([first * CLIP_SECONDS, (last + 1.0) * CLIP_SECONDS], axis=-1)
    durations = np.array([q.duration for q in prep.queries], dtype=np.float64)
    windows = np.clip(windows, 0.0, durations[:, None, None])
    scores = np.where(valid, np.append(spans.score, 0.0)[safe], 0.0)
    windows = np.where(valid[..., None], windows, 0.0)
    return Predictions(windows, scores, valid, curves.saliency, prep.n_frames)
