"""What `granalign cache build` takes: one object, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.builder.batching import SHARD_BUCKETS
from harness.cache.backbones import DEFAULT_BACKBONE
from harness.cache.producers import DEFAULT_FRAME_FILTER, DEFAULT_REWRITER_MODEL
from harness.core.constants import K_MAX
from harness.core.stages import BUILD_ORDER, stage_name

OPTION_GROUPS = ("decoder", "rewriter", "frame_filter", "captioner")  # `--opt GROUP.KEY=VALUE`


@dataclass
class BuildConfig:
    """Everything `granalign cache build` takes; `options` holds per-backend keyword args.

    `options` groups: the backends, `decoder`, `rewriter`, `frame_filter`, `captioner`.
    """

    dataset: str
    videos: str | None = None
    stages: tuple[str, ...] = BUILD_ORDER
    rewriter: str = "hf-causal-lm"
    rewriter_model: str = DEFAULT_REWRITER_MODEL
    rewriter_model_key: str | None = None
    rewriter_revision: str = ""
    pairs: tuple[int, ...] = (1,)  # Table 13 alone needs 1..5
    frame_filter: str = DEFAULT_FRAME_FILTER
    frame_filter_model: str | None = None
    frame_filter_model_key: str | None = None
    captioner: str = DEFAULT_BACKBONE
    caption_model: str | None = None
    caption_model_key: str | None = None
    decoder: str = "decord"
    fallback_decoder: str | None = "pyav"
    frames_dir: str | None = None
    max_side: int | None = 640
    device: str | None = None
    dtype: str = "auto"
    batch_size: int | None = None
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    data_root: str | None = None
    k_max: int = K_MAX
    embedder: str = "minilm"
    embedder_model: str | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        self.stages = tuple(stage_name(s) for s in self.stages)
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard must be i/N with 0 <= i < N, got {i}/{n}")
        if n > SHARD_BUCKETS:
            raise ValueError(f"a build has at most {SHARD_BUCKETS} shards, got {i}/{n}")
        bad_groups = [g for g in self.options if g not in OPTION_GROUPS]
        if bad_groups:
            raise ValueError(
                f"unknown option group(s) {', '.join(bad_groups)}; valid: {', '.join(OPTION_GROUPS)}"
            )


