"""Caption backbones: the model, prompts and key-element extractor of each caption set.

A backbone is one class: its default model id, its query-agnostic prompt (every frame),
its query-aware prompt (candidate frames, filled with the query's `{entities}` and
`{actions}` by the extractor `entities` names: `spacy`, spaCy's parse, or `rules`, the
word-list extractor), and whether it is a public release that is imported rather than
built. Prompt text and extractor are part of the cache keys (`producers.caption_producer`);
the builder's captioners (`harness.builder.backends.captioners`) run the backbone they
name; a run config names one in `captions:`.
"""

from __future__ import annotations

from typing import ClassVar

from harness.core.registries import CAPTION_BACKBONES


class CaptionBackbone:
    """A caption set: what made it, and with which prompts."""

    model: ClassVar[str] = ""
    agnostic_prompt: ClassVar[str] = ""
    aware_prompt: ClassVar[str | None] = None  # None: no query-aware mode
    entities: ClassVar[str | None] = None  # key-element extractor for the aware prompt
    imported: ClassVar[bool] = False  # a public release: `cache import`, never built


@CAPTION_BACKBONES.register("qwen2.5-vl")
class Qwen25VL(CaptionBackbone):
    """Qwen2.5-VL-7B-Instruct, the paper's captioner (agnostic and aware)."""

    model = "Qwen/Qwen2.5-VL-7B-Instruct"
    agnostic_prompt = "Describe this video frame in one sentence."
    aware_prompt = (
        "Describe this video frame in one sentence, paying attention to these entities: "
        "{entities}; and these actions: {actions}. Mention them only if they are visible.")
    entities = "spacy"


@CAPTION_BACKBONES.register("blip2")
class Blip2OPT(CaptionBackbone):
    """BLIP-2 OPT-2.7b, the appendix's captioner (Table 6).

    OPT-2.7b is not instruction-tuned: it continues text. The agnostic prompt is a caption
    prefix; the aware prompt an open question in BLIP-2's zero-shot VQA format, never a
    yes/no question, which it would answer "yes" or "no"."""

    model = "Salesforce/blip2-opt-2.7b"
    agnostic_prompt = "a photo of"
    aware_prompt = "Question: What is happening in this image with {entities} (actions: {actions})? Answer:"
    entities = "spacy"


@CAPTION_BACKBONES.register("minigptv2")
class MiniGPTv2(CaptionBackbone):
    """MiniGPT-v2 frame captions of VTG-GPT's public release (imported, agnostic only)."""

    model = "MiniGPT-v2 (VTG-GPT release, YoucanBaby/VTG-GPT data/qvhighlights/caption)"
    agnostic_prompt = "[caption] (VTG-GPT release; prompt as published there)"
    imported = True


DEFAULT_BACKBONE = "qwen2.5-vl"  # the paper's


def backbone(name: str) -> type[CaptionBackbone]:
    """The backbone class of `name` (an unknown name lists the valid ones)."""
    return CAPTION_BACKBONES.get(name)


def importable_backbones() -> list[str]:
    return [n for n in CAPTION_BACKBONES.names() if CAPTION_BACKBONES.get(n).imported]
