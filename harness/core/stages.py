"""The stages of the data flow, one vocabulary for the cache, the builder and Table 4.

A stage has one name everywhere: the cache keys entries by it, `granalign cache build
--stages` takes it, timing records carry it. `frames` is the only stage whose output is
files (the frame store) rather than cache entries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    label: str
    cached: bool  # has cache entries (False: files in the frame store)
    online: bool  # done for every query at run time (counts in Table 4's InT)


_STAGES = (
    Stage("frames", "decoded frames", cached=False, online=False),
    Stage("variants", "query variants", cached=True, online=True),
    Stage("frame_scores", "frame-filter scores", cached=True, online=True),
    Stage("captions_agnostic", "agnostic captions", cached=True, online=False),
    Stage("captions_aware", "aware captions", cached=True, online=True),
    Stage("embeddings", "text embeddings", cached=True, online=False),
)
STAGES: dict[str, Stage] = {s.name: s for s in _STAGES}
CACHE_STAGES: tuple[str, ...] = tuple(s.name for s in _STAGES if s.cached)
ONLINE_STAGES: tuple[str, ...] = tuple(s.name for s in _STAGES if s.online)
# the order the builder runs them: the data flow's, so the captioner's two stages are
# adjacent; with the caption-text stand-in filter (it reads agnostic captions) agnostic
# captions go first
BUILD_ORDER = tuple(STAGES)
CAPTIONS_FIRST_ORDER = ("frames", "variants", "captions_agnostic", "frame_scores", "captions_aware",
                        "embeddings")


def stage_name(name: str) -> str:
    """`name` if it is a stage; unknown names list the valid ones."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}")
    return name


def stage_order(name: str) -> int:
    """Position in the data flow, for sorting reports."""
    return list(STAGES).index(name) if name in STAGES else len(STAGES)
