"""Named producers: how readers and writers of the cache agree on keys.

A run names its inputs in words (`captions: qwen2.5-vl`, `rewriter: llama3`, pair 2); the
builder and the importers name what they write the same way. Both go through the functions
here, so the content-addressed key a run looks up is exactly the key a builder wrote.
Prompts and instructions are data (`harness/prompts/*.yaml`), and their text is hashed.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from harness.cache.backbones import backbone
from harness.cache.store import Producer
from harness.core.constants import FPS, K_MAX, M_MAX
from harness.core.query import Query
from harness.core.yaml_io import parse_yaml

DEFAULT_REWRITER_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
DEFAULT_FRAME_FILTER = "clip-vit-b32"
FRAME_FILTER_MODELS = {
    "clip-vit-b32": "open_clip:ViT-B-32/openai",
    "caption-text": "caption-text stand-in (query-caption similarity, no frame features)",
}
PARAPHRASE_BACKEND = "baichuan2-paraphrase"
PARAPHRASE_MODEL = "Baichuan2-13B (VTG-GPT release)"


@cache
def _yaml(name: str) -> dict[str, Any]:
    text = resources.files("harness.prompts").joinpath(name).read_text(encoding="utf-8")
    return parse_yaml(text, f"harness/prompts/{name}")  # the one YAML loader


def instruction_pairs() -> dict[int, dict[str, str]]:
    """pair number (1..5) -> {'simplified': template, 'detailed': template}."""
    return {int(k): v for k, v in _yaml("rewrite_instructions.yaml")["pairs"].items()}


# -- inputs -------------------------------------------------------------------------------
def query_item(q: Query) -> dict[str, Any]:
    """A rewrite depends on the query text alone."""
    return query_text_item(q.query)


def query_text_item(text: str) -> dict[str, Any]:
    return {"query": text}


def video_item(family: str, vid: str) -> dict[str, Any]:
    """Videos are shared by the splits of one dataset family (`qvhighlights`)."""
    return {"dataset": family, "vid": vid}


def video_query_item(family: str, q: Query) -> dict[str, Any]:
    """Frame-filter scores and aware captions depend on the video and the query text."""
    return {"dataset": family, "vid": q.vid, "query": q.query}


# -- producers ----------------------------------------------------------------------------
def rewrite_producer(
    backend: str = "hf-causal-lm",
    model: str = DEFAULT_REWRITER_MODEL,
    pair: int = 1,
    revision: str = "",
    m_max: int = M_MAX,
) -> Producer:
    pairs = instruction_pairs()
    if pair not in pairs:
        raise ValueError(f"unknown instruction pair {pair}; valid: {sorted(pairs)}")
    p = pairs[pair]
    prompt = f"simplified:\n{p['simplified']}\n\ndetailed:\n{p['detailed']}"
    return Producer("variants", backend, model, revision, prompt, {"pair": pair, "m": m_max})


def paraphrase_producer() -> Producer:
    """The VTG-GPT paraphrases: five same-granularity rewrites per query (`qp`)."""
    return Producer("variants", PARAPHRASE_BACKEND, PARAPHRASE_MODEL, params={"kind": "qp"})


def frame_filter_producer(name: str = DEFAULT_FRAME_FILTER, model: str | None = None) -> Producer:
    if model is None:
        if name not in FRAME_FILTER_MODELS:
            raise ValueError(
                f"unknown frame filter {name!r}; valid: {', '.join(sorted(FRAME_FILTER_MODELS))}"
                " (or give its model id)"
            )
        model = FRAME_FILTER_MODELS[name]
    return Producer("frame_scores", name, model, params={"fps": FPS})


def caption_producer(
    name_of_backbone: str,
    mode: str,
    model: str | None = None,
    frame_filter: Producer | None = None,
    k_max: int = K_MAX,
) -> Producer:
    """Agnostic (`mode='agnostic'`) or aware (`'aware'`) captions of a named backbone.

    Aware captions exist for the top `k_max`% frames of a frame filter's ranking, so the
    filter's identity is part of their key.
    """
    bb = backbone(name_of_backbone)
    model = model or bb.model
    if mode == "agnostic":
        return Producer("captions_agnostic", name_of_backbone, model, prompt=bb.agnostic_prompt,
                        params={"fps": FPS})
    if mode == "aware":
        if bb.aware_prompt is None:
            raise ValueError(f"caption backbone {name_of_backbone!r} has no query-aware mode")
        ff = frame_filter or frame_filter_producer()
        params = {"fps": FPS, "k_max": k_max, "frame_filter": ff.digest}
        if bb.entities:  # the extractor that fills the prompt is part of the key
            params["entities"] = bb.entities
        return Producer("captions_aware", name_of_backbone, model, prompt=bb.aware_prompt, params=params)
    raise ValueError(f"caption mode must be 'agnostic' or 'aware', got {mode!r}")
