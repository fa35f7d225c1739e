"""Table 4's inputs: time per query and peak memory from the builder's timing records."""

from __future__ import annotations

from pathlib import Path

from harness.builder.metering import efficiency_summary
from harness.cache.producers import caption_producer, frame_filter_producer, rewrite_producer
from harness.cache.store import Cache
from harness.config import ExperimentConfig
from harness.core.results import Missing
from harness.runner.trial import source_spec


def test_efficiency_sums_online_stages_and_takes_the_peak(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    cfg = source_spec(ExperimentConfig())
    gb = 2**30
    # 10 queries: rewrite 2 s total, frame filter 1 s, aware captions 7 s -> 1.0 s per query
    cache.record_timing(rewrite_producer(cfg.rewriter, cfg.rewriter_model, 1), 10, 2.0, 16 * gb, "cuda",
                        {"queries": 10})
    cache.record_timing(frame_filter_producer(), 10, 1.0, 1 * gb, "cuda", {"queries": 10})
    assert efficiency_summary(cache, cfg, 10) == Missing("timings/captions_aware/qwen2.5-vl")
    cache.record_timing(caption_producer("qwen2.5-vl", "aware"), 10, 7.0, 18 * gb, "cuda", {"queries": 10})
    assert efficiency_summary(cache, cfg, 10) == {"InT_s": 1.0, "GMU_GB": 18.0}


def test_efficiency_of_a_backbone_without_aware_mode(tmp_path: Path) -> None:
    res = efficiency_summary(Cache(tmp_path / "c"), source_spec(ExperimentConfig(captions="minigptv2")), 5)
    assert isinstance(res, Missing) and res.label.startswith("missing: timings")
