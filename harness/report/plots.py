"""Figures as PNG files: sensitivity curves (Fig. 8), query-type breakdown (Fig. 7), and a
per-query score curve with GT and predicted windows (Fig. 9).

matplotlib is imported inside each function with the Agg backend, so nothing here needs a
display and importing this module costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.builder.backends.granular import has_proper_noun, proper_nouns
from harness.core.constants import CLIP_SECONDS
from harness.core.query import Query

QUERY_TYPES = ("Simple", "Detail", "Else")
_WORD = re.compile(r"[A-Za-z0-9']+")


def capitalised_word(text: str) -> bool:
    """The word-shape rule: a capitalised word that does not start the sentence."""
    return any(t[0].isupper() and t != "I" for t in _WORD.findall(text)[1:])


def query_type(text: str, proper_noun: Callable[[str], bool] = has_proper_noun) -> str:
    """Fig. 7's query types: Simple (<= 6 tokens), Detail (>= 20 tokens or a proper noun),
    Else. Proper nouns come from spaCy's parse (named entities, PROPN tags); the word-shape
    rule `capitalised_word` is the alternative. The paper's fourth type, Error (a grammatical
    error), needs a grammar checker this harness does not have; it is not computed."""
    n = len(_WORD.findall(text))
    return _type_of(n, n < 20 and proper_noun(text))


def query_types(texts: Sequence[str]) -> list[str]:
    """`query_type` of many queries, their proper nouns found in one spaCy batch."""
    return [_type_of(len(_WORD.findall(t)), named) for t, named in zip(texts, proper_nouns(texts), strict=True)]


def _type_of(n_words: int, names_something: bool) -> str:
    if n_words >= 20 or names_something:
        return "Detail"
    return "Simple" if n_words <= 6 else "Else"


def _pyplot() -> Any:
    import matplotlib  # lazy: heavy optional (matplotlib, 0.3 s); most runs draw nothing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy optional (matplotlib)

    return plt


def sensitivity_curve(
    param: str,
    values: Sequence[float],
    ours: Mapping[str, Sequence[float | None]],
    paper: Mapping[str, Sequence[float | None]],
    path: str | Path,
    title: str = "",
) -> Path:
    """One panel per metric: our curve (solid) beside the paper's (dashed) over `param`."""
    plt = _pyplot()
    metrics = list(dict.fromkeys([*ours, *paper]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    x = np.asarray(values, dtype=float)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, series, style in (("ours", ours.get(metric), "-o"), ("paper", paper.get(metric), "--s")):
            if series is None:
                continue
            y = np.array([np.nan if v is None else v for v in series], dtype=float)
            if np.isfinite(y).any():
                ax.plot(x, y, style, label=label)
        ax.set_title(metric)
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def query_type_breakdown(
    types: Sequence[str], top1_iou: np.ndarray, path: str | Path, title: str = ""
) -> tuple[Path, dict[str, dict[str, float]]]:
    """R1@0.5 and R1@0.7 per query type (Fig. 7, `types` from `query_types`); returns the
    figure and the numbers."""
    plt = _pyplot()
    types = np.asarray(types)
    stats: dict[str, dict[str, float]] = {}
    for t in QUERY_TYPES:
        sel = types == t
        n = int(sel.sum())
        stats[t] = {
            "n": n,
            "R1@0.5": float(100 * np.mean(top1_iou[sel] >= 0.5)) if n else float("nan"),
            "R1@0.7": float(100 * np.mean(top1_iou[sel] >= 0.7)) if n else float("nan"),
        }
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(len(QUERY_TYPES))
    for k, metric in enumerate(("R1@0.5", "R1@0.7")):
        ax.bar(x + (k - 0.5) * 0.38, [stats[t][metric] for t in QUERY_TYPES], 0.38, label=metric)
    ax.set_xticks(x, [f"{t}\n(n={stats[t]['n']})" for t in QUERY_TYPES])
    ax.set_ylabel("%")
    ax.set_title(title or "R1 by query type (Error type not computed)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, stats


def score_curve(query: Query, prediction: Mapping[str, Any], path: str | Path, top: int = 3) -> Path:
    """Fig. 9: the frame-score curve S of one query, GT windows shaded, top predictions."""
    plt = _pyplot()
    sal = np.asarray(prediction.get("pred_saliency_scores") or [], dtype=float)
    t = (np.arange(sal.size) + 0.5) * CLIP_SECONDS
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(t, sal, color="black", lw=1.2, label="frame score S")
    for k, (s, e) in enumerate(query.windows):
        ax.axvspan(s, e, color="tab:green", alpha=0.25, label="GT" if k == 0 else None)
    for k, (s, e, score) in enumerate((prediction.get("pred_relevant_windows") or [])[:top]):
        y = -0.06 - 0.05 * k
        ax.plot([s, e], [y, y], lw=4, color="tab:red", alpha=1.0 - 0.25 * k,
                label=f"prediction {k + 1} ({score:.2f})")
    ax.set_xlim(0, max(query.duration, float(t[-1]) + 1 if t.size else query.duration))
    ax.set_xlabel("seconds")
    ax.set_title(f"qid {query.qid}: {query.query[:90]}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
