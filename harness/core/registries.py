"""Every registry of the harness, declared here and nowhere else.

As in lm-evaluation-harness (`lm_eval/api/registry.py`) and mmengine (`registry/root.py`):
one module lists every kind of pluggable component, what it is for and the base class its
members must have; the modules that define components import their registry from here and
add to it with a decorator (`@RECIPES.register("granalign")`). A base class is named as
`"module:Class"` and resolved when the first member registers, so this module imports
nothing of the harness and every layer can use it.

`REGISTERING_MODULES` names the modules whose import fills the registries: `load_all()`
imports them (what `granalign ls` and config checks need), so a command that uses one
registry never has to import every component of the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.core.registry import Registry

# data and evaluation
DATASETS: Registry[Any] = Registry("dataset", doc="benchmark splits (family:split)")
PROTOCOLS: Registry[Any] = Registry("protocol", doc="evaluators and the metric keys they report")
# the cache
SYNTHETIC_CACHES: Registry[Any] = Registry(
    "synthetic cache", doc="own caches of synthetic datasets, filled on first use")
EMBEDDERS: Registry[Any] = Registry("embedder", doc="sentence embedders (cosine = dot product)")
CAPTION_BACKBONES: Registry[Any] = Registry(
    "caption backbone", base="harness.cache.backbones:CaptionBackbone",
    doc="caption sets: a backbone's model, prompts and key-element extractor")
# the method
QUERY_KINDS: Registry[Any] = Registry(
    "query kind", base="harness.method.kinds:QueryKind", doc="query variants: q, qs, qd, qp")
CAPTION_KINDS: Registry[Any] = Registry(
    "caption kind", base="harness.method.kinds:CaptionKind", doc="caption kinds: Ca, Cq")
PAIRINGS: Registry[Any] = Registry("pairing", doc="(query kind, caption kind) pairs averaged in Eq. 1")
NORMALISATIONS: Registry[Any] = Registry("normalisation", doc="cosine -> [0, 1] score per frame (g in Eq. 1)")
SMOOTHERS: Registry[Any] = Registry(
    "smoother", doc="temporal context: a frame's score over its neighbours (not the paper's)")
PRUNERS: Registry[Any] = Registry(
    "pruning rule", doc="steps 2-3 of the MPG: selected frames -> merged, pruned spans")
SPAN_SCORERS: Registry[Any] = Registry("span scorer", doc="span score, Eq. 2")
RECIPES: Registry[Any] = Registry(
    "recipe", base="harness.method.recipes:Recipe", doc="score curves -> ranked windows")
# the builder's model backends
DECODERS: Registry[Any] = Registry(
    "frame decoder", base="harness.builder.backends.base:FrameDecoder", doc="video file -> frames at 0.5 fps")
REWRITERS: Registry[Any] = Registry(
    "rewriter", base="harness.builder.backends.base:Rewriter",
    doc="query -> simplified and detailed rewrites (variants stage)")
FRAME_FILTERS: Registry[Any] = Registry(
    "frame filter", base="harness.builder.backends.base:FrameFilter",
    doc="frame-query similarity that picks candidate frames")
CAPTIONERS: Registry[Any] = Registry(
    "captioner", base="harness.builder.backends.base:Captioner",
    doc="frame captioners, query-agnostic and query-aware")
KEY_ELEMENT_EXTRACTORS: Registry[Any] = Registry(
    "key-element extractor", doc="a query's entities and actions for aware-caption prompts")

REGISTERING_MODULES = (
    "harness.data",
    "harness.eval",
    "harness.cache.demo",
    "harness.cache.embedders",
    "harness.cache.lexical",
    "harness.cache.backbones",
    "harness.method.recipes",
    "harness.builder.backends",
)


def load_all() -> None:
    """Import every module that registers components (each import happens once)."""
    for name in REGISTERING_MODULES:
        importlib.import_module(name)
