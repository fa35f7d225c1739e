"""Model backends for the cache builder, one module per kind, each registered by name.

| registry | names | module |
|---|---|---|
| `DECODERS` | `decord` (paper), `pyav` (fallback) | `frames.py` |
| `REWRITERS` | `hf-causal-lm` (LLaMA-3-8B-Instruct by default; any hub id, folder or GGUF) | `rewrite.py` |
| `FRAME_FILTERS` | `clip-vit-b32` (open_clip), `caption-text` (stand-in, no frame features) | `frame_filter.py` |
| `CAPTIONERS` | `qwen2.5-vl` (paper), `blip2` (appendix) | `captioners.py` |

Add a backend: subclass the base class in `base.py` and decorate it with
`@REGISTRY.register("name")`. `load_backends()` imports every module so that all names are
registered; it imports no heavy library (those load when a model is first used).
"""

from __future__ import annotations

import importlib

from harness.backends.base import (
    CAPTIONERS,
    DECODERS,
    FRAME_FILTERS,
    REWRITERS,
    Captioner,
    FrameDecoder,
    FrameFilter,
    Frames,
    Rewriter,
    VideoError,
    candidate_frames,
    frame_times,
)

BACKEND_MODULES = ("frames", "rewrite", "frame_filter", "captioners")


def load_backends() -> None:
    """Import every backend module (registers their names). Cheap: no torch import."""
    for name in BACKEND_MODULES:
        importlib.import_module(f"harness.backends.{name}")


__all__ = [
    "CAPTIONERS", "DECODERS", "FRAME_FILTERS", "REWRITERS", "Captioner", "FrameDecoder",
    "FrameFilter", "Frames", "Rewriter", "VideoError", "candidate_frames", "frame_times",
    "load_backends",
]
