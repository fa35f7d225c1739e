"""The demo dataset's cache: every stage written under the real producers' keys.

The demo (`harness.data.demo`) is SYNTHETIC; it lives in its own cache folder so that its
text can never answer a real query. `ensure_demo_cache` fills and embeds it on first use
(seconds) and reuses it afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.cache.embedders import build_embedder, embed_dataset
from harness.cache.producers import (
    caption_producer,
    frame_filter_producer,
    instruction_pairs,
    paraphrase_producer,
    query_item,
    rewrite_producer,
    video_item,
    video_query_item,
)
from harness.cache.store import Cache
from harness.core.constants import K_MAX
from harness.core.registries import SYNTHETIC_CACHES
from harness.data.demo import (
    DEMO_DATASET,
    SEED,
    agnostic_caption,
    aware_caption,
    demo_world,
    frame_filter_scores,
    paraphrases,
    rewrites,
)
from harness.data.spec import load_dataset

DEMO_CACHE = Path(".granalign") / "demo-cache"
FAMILY = "demo"


def populate(cache: Cache) -> None:
    """Write every stage of the demo into `cache` under the real producers' keys."""
    rng = np.random.default_rng(SEED + 1)
    videos, queries = demo_world()
    by_vid = {v.vid: v for v in videos}
    ff = frame_filter_producer()
    for backbone, style in (("qwen2.5-vl", "full"), ("blip2", "short")):
        cache.put_many(
            caption_producer(backbone, "agnostic"),
            [
                (video_item(FAMILY, v.vid),
                 [agnostic_caption(v.scene_at(i), i, rng, style) for i in range(v.n_frames)],
                 "ok", {"synthetic": True})
                for v in videos
            ],
        )
    ff_rows, aware = [], {"qwen2.5-vl": [], "blip2": []}
    for dq in queries:
        video = by_vid[dq.query.vid]
        scores = frame_filter_scores(video, dq.scene, rng)
        ff_rows.append((video_query_item(FAMILY, dq.query), scores, "ok", {"synthetic": True}))
        n_cand = max(1, math.ceil(K_MAX / 100 * video.n_frames))
        ranked = [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:n_cand]]
        for backbone in aware:
            caps = [aware_caption(video.scene_at(i), dq.scene, rng) for i in ranked]
            if backbone == "blip2":
                caps = [c.split(";")[0].lower() for c in caps]
            aware[backbone].append(
                (video_query_item(FAMILY, dq.query), {"frames": ranked, "captions": caps},
                 "ok", {"synthetic": True})
            )
    cache.put_many(ff, ff_rows)
    for backbone, rows in aware.items():
        cache.put_many(caption_producer(backbone, "aware", frame_filter=ff), rows)
    for pair in instruction_pairs():
        cache.put_many(
            rewrite_producer(pair=pair),
            [(query_item(dq.query), rewrites(dq, pair, rng), "ok", {"synthetic": True}) for dq in queries],
        )
    cache.put_many(
        paraphrase_producer(),
        [(query_item(dq.query), {"qp": paraphrases(dq, rng)}, "ok", {"synthetic": True}) for dq in queries],
    )


@SYNTHETIC_CACHES.register(FAMILY)
def ensure_demo_cache(
    path: str | Path | None = None, embedder: str = "minilm", progress: bool = False
) -> Cache:
    """The demo's own cache, filled and embedded on first use (seconds), reused after."""
    cache = Cache(path or DEMO_CACHE)
    dataset = load_dataset(DEMO_DATASET)
    q = dataset.queries[0]
    ff = frame_filter_producer()
    probes = [(caption_producer(b, "agnostic"), video_item(FAMILY, q.vid)) for b in ("qwen2.5-vl", "blip2")]
    probes += [(caption_producer(b, "aware", frame_filter=ff), video_query_item(FAMILY, q))
               for b in ("qwen2.5-vl", "blip2")]
    probes += [(rewrite_producer(pair=p), query_item(q)) for p in instruction_pairs()]
    probes += [(ff, video_query_item(FAMILY, q)), (paraphrase_producer(), query_item(q))]
    if any(cache.missing(producer, [item]) for producer, item in probes):  # new or older keys
        populate(cache)
    embed_dataset(cache, dataset, build_embedder(embedder), progress=progress)
    return cache
