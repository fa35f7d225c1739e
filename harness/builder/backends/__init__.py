"""Model backends for the cache builder, one module per kind, each registered by name.

| registry | names | module |
|---|---|---|
| `DECODERS` | `decord` (paper), `pyav` (fallback) | `frames.py` |
| `REWRITERS` | `hf-causal-lm` (LLaMA-3-8B-Instruct by default; any hub id, folder or GGUF) | `rewrite.py` |
| `FRAME_FILTERS` | `clip-vit-b32` (open_clip), `caption-text` (stand-in, no frame features) | `frame_filter.py` |
| `CAPTIONERS` | `qwen2.5-vl` (paper), `blip2` (appendix) | `captioners.py` |

Add a backend: subclass the base class in `base.py` and decorate it with
`@REGISTRY.register("name")`. Importing this package imports every backend module, which
registers all names; no heavy library is imported (those load when a model is first used).
"""

from __future__ import annotations

from harness.builder.backends import captioners, frame_filter, frames, granular, rewrite
from harness.builder.backends.base import (
    Captioner,
    FrameDecoder,
    FrameFilter,
    Frames,
    Rewriter,
    VideoError,
    candidate_frames,
    frame_times,
)
from harness.core.registries import CAPTIONERS, DECODERS, FRAME_FILTERS, REWRITERS

__all__ = [
    "CAPTIONERS", "DECODERS", "FRAME_FILTERS", "REWRITERS", "Captioner", "FrameDecoder",
    "FrameFilter", "Frames", "Rewriter", "VideoError", "candidate_frames", "captioners",
    "frame_filter", "frame_times", "frames", "granular", "rewrite",
]
