"""`granalign cache build`: run the models on a GPU machine and fill the cache.

One command produces every cached output the tables read, stage by stage (stage names as
in `harness.core.stages`):

| stage (`--stages`) | item | backend registry |
|---|---|---|
| `frames` | video (frame store, `<cache>/frames/`) | `DECODERS` (decord, pyav fallback) |
| `variants` | (query text, pair) | `REWRITERS` |
| `frame_scores` | (video, query) | `FRAME_FILTERS` |
| `captions_agnostic` | video | `CAPTIONERS` |
| `captions_aware` | (video, query) | `CAPTIONERS` |
| `embeddings` | text list | `EMBEDDERS` |

One model is in memory at a time: a backend is unloaded (weights dropped, CUDA cache
emptied) as soon as the next stage does not use it, so a stage's peak memory (Table 4)
holds its own model only, and a GPU that fits the largest model fits the build. Stages
run in the order above, so the two caption stages share one load of the captioner; with
the `caption-text` stand-in filter, which reads agnostic captions, agnostic captions run
before the filter (`run_order`). Producers come from `harness.cache.producers`, so a run
reads exactly the keys the builder wrote.

- Resumable: each stage asks `Cache.missing` what is left and does only that; a stage with
  nothing left never loads its model. Results are committed per batch of queries (the
  rewriter) or per video (the rest), so a crash loses at most one of them.
- Sharding and batching (`harness.builder.batching`): `--shard i/N` keeps the videos of the
  buckets b with b mod N == i, and their queries, after `--limit`. A sample's batch is a
  function of the dataset alone, so N machines together write what one would, and a
  resumed build what an uninterrupted one would (same device, dtype and batch size).
- Missing or undecodable videos are reported by id and skipped; the rest go on.
- Efficiency (Table 4): per stage and run, time, peak memory and what was resident when
  the stage's meter started (`harness.builder.metering`).

Test hook: the fault point `build:commit` (key: the stage) is reached right before each
commit (`harness.core.faults`), e.g. `build:commit#frame_scores@2|kill` kills the process
before that stage's second commit.
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm.auto import tqdm

from harness.builder.backends import VideoError, candidate_frames
from harness.builder.backends.base import resolve_device
from harness.builder.backends.frames import FrameSource, FrameStore
from harness.builder.batching import (
    batches_to_run,
    plan_batches,
    shard_bucket,
    shard_of,
)
from harness.builder.metering import FRAME_TIMINGS, StageMeter
from harness.cache.embedders import build_embedder, embed_dataset
from harness.cache.producers import (
    caption_producer,
    frame_filter_producer,
    query_item,
    rewrite_producer,
    video_item,
    video_query_item,
)
from harness.cache.store import Cache, Producer
from harness.config.build import BuildConfig
from harness.core.constants import FPS, M_MAX
from harness.core.faults import fault_point
from harness.core.query import Dataset, Query, n_clips
from harness.core.registries import (
    CAPTION_BACKBONES,
    CAPTIONERS,
    DECODERS,
    FRAME_FILTERS,
    REWRITERS,
)
from harness.core.stages import BUILD_ORDER, CAPTIONS_FIRST_ORDER
from harness.data.spec import load_dataset

STAGES = BUILD_ORDER  # what `--stages` takes, in the order they run
# the backend (key of `CacheBuilder._backends`) each stage runs
# the backend each stage runs (keys of `CacheBuilder._backends`, as the `--opt` groups)
STAGE_BACKEND = {"variants": "rewriter", "frame_scores": "frame_filter",
                 "captions_agnostic": "captioner", "captions_aware": "captioner"}


@dataclass
class StageReport:
    """What one stage did in this run."""

    stage: str
    items: int = 0  # items of the shard
    cached: int = 0  # already in the cache before this run
    done: int = 0  # computed and committed now
    failed: int = 0  # committed with status "failed"
    skipped: dict[str, str] = field(default_factory=dict)  # id -> reason
    seconds: float = 0.0
    note: str = ""

    def line(self) -> str:
        s = (f"{self.stage:<18} {self.items:>6} items  {self.cached:>6} cached  {self.done:>6} done"
             f"  {self.failed:>4} failed  {len(self.skipped):>4} skipped  {self.seconds:7.1f} s")
        return s + (f"  ({self.note})" if self.note else "")


@dataclass
class BuildReport:
    dataset: str
    shard: str
    stages: list[StageReport] = field(default_factory=list)
    videos_skipped: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"cache build {self.dataset} shard {self.shard}"]
        out += ["  " + s.line() for s in self.stages]
        if self.videos_skipped:
            out.append(f"  {len(self.videos_skipped)} video(s) skipped:")
            out += [f"    {vid}: {why}" for vid, why in self.videos_skipped.items()]
        for s in self.stages:
            other = {k: v for k, v in s.skipped.items() if k not in self.videos_skipped}
            for k, v in other.items():
                out.append(f"  {s.stage} skipped {k}: {v}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "shard": self.shard,
            "stages": [s.__dict__ for s in self.stages], "videos_skipped": self.videos_skipped,
        }


# -- sharding -------------------------------------------------------------------------------
def shard_queries(dataset: Dataset, index: int, count: int) -> list[Query]:
    """The queries whose video falls in shard `index` of `count`, in dataset order."""
    return [q for q in dataset.queries if shard_of(q.vid, count) == index]


def run_order(stages: tuple[str, ...], filter_reads_captions: bool) -> list[str]:
    """The order this build runs `stages` in.

    The frame filter runs before agnostic captions, so the captioner's two stages are
    adjacent and it loads once; the `caption-text` stand-in filter reads agnostic
    captions, so with it they come first.
    """
    order = CAPTIONS_FIRST_ORDER if filter_reads_captions else BUILD_ORDER
    return [s for s in order if s in stages]


def _device_of(backend: Any) -> str:
    return resolve_device(getattr(backend, "device_name", None))


# -- the builder ----------------------------------------------------------------------------
class CacheBuilder:
    """Builds the cache for one dataset shard; see the module docstring."""

    def __init__(
        self,
        config: BuildConfig,
        cache: Cache,
        dataset: Dataset | None = None,
        log: TextIO | None = None,
    ) -> None:
        self.cfg = config
        self.cache = cache
        self.log = log or sys.stderr
        full = dataset or load_dataset(config.dataset, config.data_root)
        ds = full
        if config.limit is not None:  # whole videos: the videos of the first `limit` queries
            vids = {q.vid for q in full.subset(config.limit).queries}
            ds = full.with_queries(tuple(q for q in full.queries if q.vid in vids))
        self.dataset = ds
        self.name = ds.label
        self.family = ds.family
        self.queries = shard_queries(ds, *config.shard)
        # vid -> frames (the annotation's clip count), in first-seen order
        self.videos: dict[str, int] = {}
        self.queries_per_video: dict[str, int] = defaultdict(int)
        for q in self.queries:
            self.videos.setdefault(q.vid, n_clips(q.duration))
            self.queries_per_video[q.vid] += 1
        # unique (vid, query text) pairs and unique query texts, in order
        self.vq: list[Query] = list({(q.vid, q.query): q for q in self.queries}.values())
        self.texts: list[Query] = list({q.query: q for q in self.queries}.values())
        # a query text's batch group: the bucket of the first video that asks it, in the
        # whole dataset, `--limit` or not (so that every shard and every limit plans the same
        # batches)
        self.text_bucket: dict[str, int] = {}
        for q in full.queries:
            self.text_bucket.setdefault(q.query, shard_bucket(q.vid))
        self._check_names()
        self.report = BuildReport(ds.name, f"{config.shard[0]}/{config.shard[1]}")
        self._backends: dict[str, Any] = {}
        self._unloaded: dict[str, weakref.ref[Any]] = {}
        self._source: Any = None

    def _check_names(self) -> None:
        """Fail before any work when a named backend does not exist (lists valid names)."""
        st = set(self.cfg.stages)
        if "variants" in st:
            REWRITERS.get(self.cfg.rewriter)
        if st & {"frame_scores", "captions_aware"}:
            FRAME_FILTERS.get(self.cfg.frame_filter)
        uses_captions = bool(st & {"captions_agnostic", "captions_aware"}) or (
            "frame_scores" in st and self.cfg.frame_filter == "caption-text")
        if uses_captions:
            CAPTION_BACKBONES.get(self.cfg.captioner)
        if st & {"captions_agnostic", "captions_aware"}:
            CAPTIONERS.get(self.cfg.captioner)
        if st & {"frames", "frame_scores", "captions_agnostic", "captions_aware"}:
            DECODERS.get(self.cfg.decoder)
            if self.cfg.fallback_decoder:
                DECODERS.get(self.cfg.fallback_decoder)
        if "frames" in st and self.cfg.videos is None:
            raise ValueError("stage 'frames' needs --videos (a folder of <vid>.mp4/.mkv/.webm/.avi)")
        for p in self.cfg.pairs if "variants" in st else ():
            rewrite_producer(pair=p)  # unknown pairs fail here, naming the valid ones

    # -- backends (built lazily; models load on first use) --------------------------------
    def _opts(self, group: str) -> dict[str, Any]:
        return dict(self.cfg.options.get(group, {}))

    def _common(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"device": self.cfg.device, "dtype": self.cfg.dtype}
        if self.cfg.batch_size:
            kw["batch_size"] = self.cfg.batch_size
        return kw

    @property
    def rewriter(self) -> Any:
        if "rewriter" not in self._backends:
            spec = {"type": self.cfg.rewriter, "model": self.cfg.rewriter_model,
                    "revision": self.cfg.rewriter_revision, **self._common(), **self._opts("rewriter")}
            self._backends["rewriter"] = REWRITERS.build(spec)
        return self._backends["rewriter"]

    @property
    def frame_filter(self) -> Any:
        if "frame_filter" not in self._backends:
            spec: dict[str, Any] = {"type": self.cfg.frame_filter, **self._common()}
            if self.cfg.frame_filter_model:
                spec["model"] = self.cfg.frame_filter_model
            if self.cfg.frame_filter == "caption-text":
                spec.setdefault("captions", self.cfg.captioner)
                if self.cfg.caption_model:
                    spec.setdefault("caption_model", self.cfg.caption_model_key or self.cfg.caption_model)
            spec.update(self._opts("frame_filter"))
            self._backends["frame_filter"] = FRAME_FILTERS.build(spec)
        return self._backends["frame_filter"]

    @property
    def captioner(self) -> Any:
        if "captioner" not in self._backends:
            spec = {"type": self.cfg.captioner, "model": self.cfg.caption_model,
                    **self._common(), **self._opts("captioner")}
            self._backends["captioner"] = CAPTIONERS.build(spec)
        return self._backends["captioner"]

    @property
    def source(self) -> Any:
        if self._source is None:
            opts = {"fps": FPS, "max_side": self.cfg.max_side, **self._opts("decoder")}
            decoder = DECODERS.build({"type": self.cfg.decoder, **opts})
            fallback = None
            if self.cfg.fallback_decoder and self.cfg.fallback_decoder != self.cfg.decoder:
                fallback = DECODERS.build({"type": self.cfg.fallback_decoder, **opts})
            store = FrameStore(self.cfg.frames_dir or self.cache.root / "frames", FPS, self.cfg.max_side)
            self._source = FrameSource(self.cfg.videos, store, self.family, decoder, fallback)
        return self._source

    # -- producers (the keys runs read) ---------------------------------------------------
    def rewrite_producer(self, pair: int) -> Producer:
        rw = self.rewriter
        return rewrite_producer(
            self.cfg.rewriter, self.cfg.rewriter_model_key or rw.model_id, pair,
            revision=self.cfg.rewriter_revision, m_max=getattr(rw, "m", M_MAX),
        )

    def frame_filter_producer(self) -> Producer:
        return frame_filter_producer(
            self.cfg.frame_filter, self.cfg.frame_filter_model_key or self.frame_filter.model_id
        )

    def caption_producer(self, mode: str) -> Producer:
        model = self.cfg.caption_model_key or self.captioner.model_id
        if mode == "agnostic":
            return caption_producer(self.cfg.captioner, "agnostic", model)
        return caption_producer(
            self.cfg.captioner, "aware", model, frame_filter=self.frame_filter_producer(),
            k_max=self.cfg.k_max,
        )

    # -- helpers ----------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        tqdm.write(msg, file=self.log)

    def _bar(self, total: int, desc: str, unit: str) -> Any:
        return tqdm(total=total, desc=desc, unit=unit, file=self.log, dynamic_ncols=True,
                    disable=not self.cfg.progress, mininterval=1.0)

    def _frames(self, vid: str, rep: StageReport) -> Any:
        if vid in self.report.videos_skipped:
            rep.skipped[vid] = self.report.videos_skipped[vid]
            return None
        try:
            return self.source.get(vid, self.videos[vid])
        except VideoError as e:
            self.report.videos_skipped[vid] = e.reason + (f" ({e.path})" if e.path else "")
            rep.skipped[vid] = self.report.videos_skipped[vid]
            self._say(f"skipping video {vid}: {self.report.videos_skipped[vid]}")
            return None

    def _commit(self, stage: str, producer: Producer, rows: list[tuple[Mapping[str, Any], Any, str, Mapping[str, Any] | None]],
                rep: StageReport) -> None:
        if not rows:
            return
        fault_point("build:commit", stage)
        self.cache.put_many(producer, rows)
        rep.done += len(rows)
        rep.failed += sum(1 for r in rows if r[2] == "failed")

    def _record(self, producer: Producer, rep_items: int, m: dict[str, Any], meta: dict[str, Any],
                backend: Any) -> None:
        """The stage's timing record, with what decides its numbers beyond the cache key: the
        batch size and the attention kernel (shards of one build must agree on both)."""
        if rep_items <= 0:
            return
        config = getattr(getattr(backend, "_model", None), "config", None)
        meta = {**meta, "batch_size": getattr(backend, "batch_size", self.cfg.batch_size),
                "attn_implementation": getattr(config, "_attn_implementation", None),
                "load_s": m["load_s"], "mem_method": m["mem_method"],
                "rss_peak_bytes": m["rss_peak_bytes"], "resident_at_start": m["resident_at_start"],
                "leaked_at_start": m["leaked_at_start"],
                "allocated_at_start_bytes": m["allocated_at_start_bytes"],
                "model_bytes": m["model_bytes"], "dataset": self.name,
                "shard": self.report.shard}
        self.cache.record_timing(producer, rep_items, m["wall_s"], m["peak_mem_bytes"],
                                 m["device_label"], meta)

    # -- one model at a time ----------------------------------------------------------------
    def loaded_models(self) -> dict[str, int]:
        """The backends whose models are in memory now, with their weights' bytes."""
        return {k: b.model_bytes() for k, b in self._backends.items() if b.loaded}

    def _release(self, keep: str | None) -> None:
        """Unload every loaded backend but `keep` (the next stage's), remembering each torch
        model by weak reference so that a leaked one (still alive after its unload) shows."""
        for name, backend in self._backends.items():
            if name != keep and backend.loaded:
                if hasattr(backend._model, "parameters"):
                    self._unloaded[name] = weakref.ref(backend._model)
                backend.unload()

    def leaked_models(self) -> list[str]:
        """Backends whose unloaded model is still alive (something still holds it)."""
        return sorted(n for n, ref in self._unloaded.items() if ref() is not None)

    def _meter(self, backend: Any) -> StageMeter:
        return StageMeter(_device_of(backend), resident=self.loaded_models(),
                          leaked=self.leaked_models()).start()

    # -- stages -----------------------------------------------------------------------------
    def run(self) -> BuildReport:
        filter_reads_captions = (
            not FRAME_FILTERS.get(self.cfg.frame_filter).needs_frames
            if set(self.cfg.stages) & {"frame_scores", "captions_aware"} else False)
        order = run_order(self.cfg.stages, filter_reads_captions)
        try:
            for i, stage in enumerate(order):
                self._release(STAGE_BACKEND.get(stage))
                t = time.perf_counter()
                rep = getattr(self, f"stage_{stage}")()
                rep.seconds = time.perf_counter() - t
                self.report.stages.append(rep)
                following = order[i + 1] if i + 1 < len(order) else None
                self._release(STAGE_BACKEND.get(following) if following else None)
        finally:
            self._release(None)
        return self.report

    def stage_embeddings(self) -> StageReport:
        """Embed every text list a run of this shard reads, so `granalign run` needs no
        other step after a build (the same work as `granalign cache embed`)."""
        embedder = build_embedder({"type": self.cfg.embedder, "model": self.cfg.embedder_model},
                                  device=self.cfg.device)
        shard = self.dataset.with_queries(tuple(self.queries))
        report = embed_dataset(self.cache, shard, embedder, progress=self.cfg.progress)
        rep = StageReport("embeddings", items=report.lists)
        rep.cached = report.already_cached
        rep.done = report.embedded
        return rep

    def stage_frames(self) -> StageReport:
        rep = StageReport("frames", items=len(self.videos))
        todo = [v for v in self.videos if not self.source.has(v)]
        rep.cached = rep.items - len(todo)
        if not todo:
            return rep
        meter = StageMeter("cpu").start()
        queries = 0
        with self._bar(len(todo), "frames", "video") as bar:
            for vid in todo:
                if self._frames(vid, rep) is not None:
                    rep.done += 1
                    queries += self.queries_per_video[vid]
                bar.update(1)
        m = meter.stop()
        if rep.done:
            row = {"stage": "frames", "backend": self.cfg.decoder, "model": f"fps{FPS:g}",
                   "items": rep.done, "wall_s": m["wall_s"], "peak_mem_bytes": m["peak_mem_bytes"],
                   "device": "cpu", "meta": {"queries": queries, "unit": "video",
                                             "mem_method": m["mem_method"], "dataset": self.name},
                   "created": time.time()}
            with open(self.cache.root / FRAME_TIMINGS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        return rep

    def rewrite_plan(self, batch_size: int) -> list[list[str]]:
        """The rewriter's batches: every query text of the dataset (not only this shard's),
        grouped by its bucket and sorted by length (`harness.builder.batching`)."""
        return plan_batches(list(self.text_bucket), batch_size, sort_key=lambda t: (len(t), t),
                            group_key=self.text_bucket.__getitem__)

    def stage_variants(self) -> StageReport:
        rep = StageReport("variants", items=len(self.texts) * len(self.cfg.pairs))
        items = [query_item(q) for q in self.texts]
        todo = {p: self.cache.missing(self.rewrite_producer(p), items) for p in self.cfg.pairs}
        rep.cached = rep.items - sum(len(t) for t in todo.values())
        if not any(todo.values()):
            return rep
        rw = self.rewriter
        plan = self.rewrite_plan(rw.batch_size)
        for pair, idx in todo.items():
            if not idx:
                continue
            producer = self.rewrite_producer(pair)
            needed = {self.texts[i].query: items[i] for i in idx}
            batches = batches_to_run(plan, set(needed))
            # each pair measures its own time and peak; the weights stay loaded (and counted)
            meter = self._meter(rw)
            meter.load(rw)
            done_before = rep.done
            with self._bar(len(idx), f"rewrite pair {pair}", "query") as bar:
                for batch in batches:
                    results = rw.rewrite(batch, pair, cache=self.cache)
                    rows = [(needed[t], r.value, r.status, r.meta)
                            for t, r in zip(batch, results, strict=True) if t in needed]
                    self._commit("variants", producer, rows, rep)
                    bar.update(len(rows))
            n = rep.done - done_before
            self._record(producer, n, meter.stop(), {"queries": n, "unit": "query", "pair": pair}, rw)
        return rep

    def _by_video(self, idx: list[int]) -> dict[str, list[int]]:
        """Indices into `self.vq` of every (video, query) of each video that has one in
        `idx`: work on a video always covers all its queries, so its batches do not
        depend on what was cached before."""
        vids = {self.vq[i].vid for i in idx}
        by_vid: dict[str, list[int]] = defaultdict(list)
        for i, q in enumerate(self.vq):
            if q.vid in vids:
                by_vid[q.vid].append(i)
        return by_vid

    def stage_frame_scores(self) -> StageReport:
        rep = StageReport("frame_scores", items=len(self.vq))
        ff = self.frame_filter
        producer = self.frame_filter_producer()
        items = [video_query_item(self.family, q) for q in self.vq]
        todo = self.cache.missing(producer, items)
        rep.cached = rep.items - len(todo)
        if not todo:
            return rep
        missing = set(todo)
        by_vid = self._by_video(todo)
        if not ff.needs_frames:
            rep.note = f"STAND-IN: {ff.model_id}"
            return self._frame_filter_from_captions(ff, producer, items, by_vid, missing, rep)
        meter = self._meter(ff)
        with self._bar(len(todo), "frame filter", "query") as bar:
            for vid, idx in by_vid.items():
                frames = self._frames(vid, rep)
                if frames is not None:
                    meter.load(ff)
                    scores = ff.score_video(frames, [self.vq[i].query for i in idx])
                    rows = [(items[i], s, "ok", {"n_frames": len(frames)})
                            for i, s in zip(idx, scores, strict=True) if i in missing]
                    self._commit("frame_scores", producer, rows, rep)
                bar.update(sum(1 for i in idx if i in missing))
        self._record(producer, rep.done, meter.stop(), {"queries": rep.done, "unit": "query"}, ff)
        return rep

    def _frame_filter_from_captions(self, ff: Any, producer: Producer, items: list[dict[str, Any]],
                                    by_vid: dict[str, list[int]], missing: set[int],
                                    rep: StageReport) -> StageReport:
        cap_p = ff.caption_source()
        meter = self._meter(ff)
        meta = ff.meta()
        with self._bar(len(missing), "frame filter (caption-text)", "query") as bar:
            for vid, idx in by_vid.items():
                entry = self.cache.get(cap_p, video_item(self.family, vid))
                if entry is None or entry.status != "ok":
                    rep.skipped[vid] = (f"no agnostic captions ({cap_p.backend} / {cap_p.model}) for "
                                        "this video: build or import captions_agnostic first")
                    self._say(f"frame filter: skipping video {vid}: {rep.skipped[vid]}")
                else:
                    meter.load(ff)
                    scores = ff.score_captions(self.cache, list(entry.value), [self.vq[i].query for i in idx])
                    rows = [(items[i], s, "ok", meta) for i, s in zip(idx, scores, strict=True) if i in missing]
                    self._commit("frame_scores", producer, rows, rep)
                bar.update(sum(1 for i in idx if i in missing))
        self._record(producer, rep.done, meter.stop(), {"queries": rep.done, "unit": "query"}, ff)
        return rep

    def stage_captions_agnostic(self) -> StageReport:
        rep = StageReport("captions_agnostic", items=len(self.videos))
        cap = self.captioner
        producer = self.caption_producer("agnostic")
        vids = list(self.videos)
        items = [video_item(self.family, v) for v in vids]
        todo = self.cache.missing(producer, items)
        rep.cached = rep.items - len(todo)
        if not todo:
            return rep
        meter = self._meter(cap)
        queries = 0
        with self._bar(len(todo), "agnostic captions", "video") as bar:
            for i in todo:
                frames = self._frames(vids[i], rep)
                if frames is not None:
                    meter.load(cap)
                    captions = cap.agnostic(frames)
                    self._commit("captions_agnostic", producer,
                                 [(items[i], captions, "ok", {"n_frames": len(frames)})], rep)
                    queries += self.queries_per_video[vids[i]]
                bar.update(1)
        self._record(producer, rep.done, meter.stop(), {"queries": queries, "unit": "video"}, cap)
        return rep

    def stage_captions_aware(self) -> StageReport:
        rep = StageReport("captions_aware", items=len(self.vq))
        cap = self.captioner
        producer = self.caption_producer("aware")
        ff_p = self.frame_filter_producer()
        items = [video_query_item(self.family, q) for q in self.vq]
        todo = self.cache.missing(producer, items)
        rep.cached = rep.items - len(todo)
        if not todo:
            return rep
        missing = set(todo)
        by_vid = self._by_video(todo)
        scores = self.cache.get_many(ff_p, [items[i] for idx in by_vid.values() for i in idx])
        ready: dict[str, list[int]] = {}
        for vid, idx in by_vid.items():
            ok = []
            for i in idx:
                entry = scores.get(ff_p.key(items[i]))
                if entry is not None and entry.status == "ok":
                    ok.append(i)
                elif i not in missing:
                    continue
                elif vid in self.report.videos_skipped:
                    rep.skipped[vid] = self.report.videos_skipped[vid]
                else:
                    rep.skipped[f"{vid} / {self.vq[i].query!r}"] = (
                        f"no frame scores from {ff_p.backend} / {ff_p.model}: run stage frame_scores first"
                    )
            if any(i in missing for i in ok):
                ready[vid] = ok
        if not ready:
            return rep
        meter = self._meter(cap)
        with self._bar(sum(len(v) for v in ready.values()), "aware captions", "query") as bar:
            for vid, idx in ready.items():
                frames = self._frames(vid, rep)
                requests: list[tuple[int, list[int]]] = []
                for i in idx if frames is not None else []:
                    s = scores[ff_p.key(items[i])].value
                    if len(s) != len(frames):
                        rep.skipped[f"{vid} / {self.vq[i].query!r}"] = (
                            f"{len(s)} frame scores but {len(frames)} frames"
                        )
                        continue
                    requests.append((i, candidate_frames(s, self.cfg.k_max)))
                rows = []
                if requests:
                    meter.load(cap)
                    # all of the video's queries in one plan: mixed prompts share batches
                    captions = cap.aware_many(frames, [(self.vq[i].query, c) for i, c in requests])
                    rows = [(items[i], {"frames": c, "captions": text}, "ok",
                             {"n_frames": len(frames), "prompt": cap.aware_prompt(self.vq[i].query)})
                            for (i, c), text in zip(requests, captions, strict=True) if i in missing]
                self._commit("captions_aware", producer, rows, rep)
                bar.update(len(idx))
        self._record(producer, rep.done, meter.stop(), {"queries": rep.done, "unit": "query"}, cap)
        return rep


def build_cache(config: BuildConfig, cache: Cache | None = None, dataset: Dataset | None = None,
                log: TextIO | None = None) -> BuildReport:
    """Run the builder (library entry point of `granalign cache build`)."""
    return CacheBuilder(config, cache or Cache(), dataset, log).run()


