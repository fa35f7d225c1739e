"""Recipes: how score curves become ranked windows. GranAlign's and VTG-GPT's.

A recipe turns prepared similarities into (a) the batch of curves the MPG runs on, each
owned by one query, and (b) the per-clip saliency curve; then every recipe shares the MPG,
pooling, NMS and the conversion to seconds. Registering a new recipe is one class and one
decorator; configs select it by name (`recipe: vtg-gpt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from harness.core.constants import CLIP_SECONDS
from harness.core.registry import Registry
from harness.method.proposals import MPGParams, Spans, moment_proposals, temporal_nms
from harness.method.scoring import (
    NORMALISATIONS,
    Pair,
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


class Recipe:
    """GranAlign: Eq. 1 curves, the MPG on variant and mean curves, Eq. 2, NMS on seconds."""

    nms_closed_index = False  # True: IoU on [first, last] indices (VTG-GPT), else on time
    # the method fields of the config this recipe reads: the config hash covers these (and
    # the inputs), so two configs that differ only in a field the recipe ignores are one
    # computation
    reads: ClassVar[frozenset[str]] = frozenset({
        "pairing", "m", "lam", "K", "gap", "n", "tau", "top_k", "bins", "normalisation",
        "prune", "span_score", "proposals_from", "cq_fallback", "max_windows",
    })

    def pairs(self, cfg: Any) -> tuple[Pair, ...]:
        return resolve_pairing(cfg.pairing)

    def pair_scores(self, prep: Prepared, cfg: Any) -> list[np.ndarray]:
        """Normalised g(x_j, C_i) per pair, `(Q, m_x, T_max)`, first m variants."""
        normalise = NORMALISATIONS.get(cfg.normalisation)
        cand = None
        if prep.aware_rank is not None:
            cand = candidate_mask(prep.aware_rank, prep.n_frames, cfg.K)
        out = []
        for x, c in self.pairs(cfg):
            m = 1 if x == "q" else cfg.m
            ca = prep.sims.get((x, "Ca"))
            cq = prep.sims.get((x, "Cq"))
            ca = ca[:, :m] if ca is not None else None
            cq = cq[:, :m] if cq is not None else None
            out.append(pair_scores(c, ca, cq, cand, normalise, cfg.cq_fallback))
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
        return MPGParams(
            bins=cfg.bins, top_k=cfg.top_k, gap=cfg.gap, n=float(cfg.n), lam=cfg.lam,
            prune=cfg.prune, span_score=cfg.span_score,
        )


RECIPES: Registry[type[Recipe]] = Registry("recipe", Recipe, doc="score curves -> ranked windows")
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
    reads = Recipe.reads - {"prune", "n", "span_score", "proposals_from"}

    def curves(self, prep: Prepared, cfg: Any) -> Curves:
        per_pair = self.pair_scores(prep, cfg)
        allv = np.concatenate(per_pair, axis=1)  # (Q, sum m_x, T)
        nq, nv, t = allv.shape
        return Curves(allv.reshape(nq * nv, t), np.repeat(np.arange(nq), nv), frame_scores(allv))

    def mpg_params(self, cfg: Any) -> MPGParams:
        p = super().mpg_params(cfg)
        return MPGParams(p.bins, p.top_k, p.gap, 0.0, p.lam, "none", "selected")


@dataclass
class QueryPrediction:
    windows: np.ndarray  # (k, 2) seconds
    scores: np.ndarray  # (k,)
    saliency: np.ndarray  # (n_frames,)


def predict(prep: Prepared, cfg: Any) -> list[QueryPrediction]:
    """Windows (seconds, best first, at most `max_windows`) and saliency for every query."""
    recipe = RECIPES.get(cfg.recipe)()
    curves = recipe.curves(prep, cfg)
    spans = moment_proposals(curves.values, recipe.mpg_params(cfg))
    return pool_and_nms(spans, curves, prep, cfg.tau, cfg.max_windows, recipe.nms_closed_index)


def pool_and_nms(
    spans: Spans, curves: Curves, prep: Prepared, tau: float, max_windows: int, closed_index: bool
) -> list[QueryPrediction]:
    """Pool each query's spans from all its curves, NMS, convert to clipped seconds."""
    owner = curves.owner[spans.curve]
    order = np.lexsort((-spans.score, owner))
    owner_sorted = owner[order]
    bounds = np.searchsorted(owner_sorted, np.arange(len(prep.queries) + 1))
    out = []
    for qi, q in enumerate(prep.queries):
        idx = order[bounds[qi] : bounds[qi + 1]]
        first = spans.first[idx].astype(np.float64)
        last = spans.last[idx].astype(np.float64)
        score = spans.score[idx]
        ends = last if closed_index else last + 1.0
        keep = temporal_nms(np.stack([first, ends], axis=1), score, tau, max_windows)
        win = np.stack([first[keep] * CLIP_SECONDS, (last[keep] + 1.0) * CLIP_SECONDS], axis=1)
        win = np.clip(win, 0.0, q.duration)
        n = int(prep.n_frames[qi])
        out.append(QueryPrediction(win, score[keep], curves.saliency[qi, :n]))
    return out


def prediction_rows(prep: Prepared, preds: list[QueryPrediction]) -> list[dict[str, Any]]:
    """The official QVHighlights prediction jsonl rows."""
    rows = []
    for q, p in zip(prep.queries, preds, strict=True):
        windows = np.column_stack([np.round(p.windows, 4), np.round(p.scores, 6)]) if len(p.scores) else []
        rows.append(
            {
                "qid": q.qid,
                "query": q.query,
                "vid": q.vid,
                "pred_relevant_windows": windows.tolist() if len(windows) else [],
                "pred_saliency_scores": np.round(np.nan_to_num(p.saliency), 6).tolist(),
            }
        )
    return rows
