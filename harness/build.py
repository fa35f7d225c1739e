"""`granalign cache build`: run the models on a GPU machine and fill the cache.

One command produces every cached output the tables read, stage by stage:

| stage (`--stages`) | cache stage | item | backend registry |
|---|---|---|---|
| `frames` | (frame store, `<cache>/frames/`) | video | `DECODERS` (decord, pyav fallback) |
| `rewrite` | `variants` | (query text, pair) | `REWRITERS` |
| `captions_agnostic` | `captions_agnostic` | video | `CAPTIONERS` |
| `frame_filter` | `frame_scores` | (video, query) | `FRAME_FILTERS` |
| `captions_aware` | `captions_aware` | (video, query) | `CAPTIONERS` |

Stages run in that order (agnostic captions before the frame filter because the
`caption-text` stand-in filter reads them), one model in memory at a time. Producers come
from `harness/producers.py`, so a run reads exactly the keys the builder wrote.

- Resumable: each stage asks `Cache.missing` what is left and does only that; a stage with
  nothing left never loads its model. Results are committed in small batches (a batch of
  queries for the rewriter, one video otherwise), so a crash loses at most one batch.
- Sharding: `--shard i/N` keeps the videos whose sha256(vid) is i modulo N, and their
  queries, after `--limit`; N machines with i = 0..N-1 together cover the dataset once, and
  the union of their caches equals one unsharded build.
- Missing or undecodable videos are reported by id and skipped; the rest go on.
- Efficiency (Table 4): per stage and run, the wall time of the work (model loading
  excluded, reported apart as `load_s`) and the peak memory are recorded with
  `Cache.record_timing`. Peak memory is `torch.cuda.max_memory_allocated` (reset at the start
  of the stage, so it includes the weights) on a GPU; on CPU it is the process's peak
  resident set size after resetting it at the stage start (Linux `/proc/self/clear_refs`
  + `VmHWM`), or, where that reset is impossible, `resource.getrusage` `ru_maxrss`, which is
  the peak of the whole process so far (an upper bound; the record names the method).
  `efficiency_rows(cache)` turns the records into per-stage time per query and peak GB.

Test hook: `GRANALIGN_BUILD_CRASH_AFTER=STAGE:N` kills the process (SIGKILL) right before
the commit that would bring STAGE's processed items to N or more, simulating a crash mid-run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.cache import Cache, Producer
from harness.data import Dataset, Query, load_dataset, n_clips
from harness.producers import (
    DEFAULT_FRAME_FILTER,
    DEFAULT_REWRITER_MODEL,
    FPS,
    K_MAX,
    M_MAX,
    caption_producer,
    family,
    frame_filter_producer,
    query_item,
    rewrite_producer,
    video_item,
    video_query_item,
)

STAGES = ("frames", "rewrite", "frame_filter", "captions_agnostic", "captions_aware", "embeddings")
RUN_ORDER = ("frames", "rewrite", "captions_agnostic", "frame_filter", "captions_aware", "embeddings")
OPTION_GROUPS = ("frames", "rewrite", "frame_filter", "captions")
CRASH_ENV = "GRANALIGN_BUILD_CRASH_AFTER"
FRAME_TIMINGS = "frame_timings.jsonl"
# stages a run of the method performs per query; agnostic captions are made offline, once
# per video ("pre-generates query-agnostic captions offline", paper section 4.3)
ONLINE_STAGES = ("variants", "frame_scores", "captions_aware")
DEFAULT_CAPTIONER = "qwen2.5-vl"


@dataclass
class BuildConfig:
    """Everything `granalign cache build` takes; `options` holds per-backend keyword args.

    `options` groups: `frames` (decoder), `rewrite`, `frame_filter`, `captions`.
    """

    dataset: str
    videos: str | None = None
    stages: tuple[str, ...] = STAGES
    rewriter: str = "hf-causal-lm"
    rewriter_model: str = DEFAULT_REWRITER_MODEL
    rewriter_model_key: str | None = None
    rewriter_revision: str = ""
    pairs: tuple[int, ...] = (1, 2, 3, 4, 5)
    frame_filter: str = DEFAULT_FRAME_FILTER
    frame_filter_model: str | None = None
    frame_filter_model_key: str | None = None
    captioner: str = DEFAULT_CAPTIONER
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
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {', '.join(bad)}; valid: {', '.join(STAGES)}")
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard must be i/N with 0 <= i < N, got {i}/{n}")
        bad_groups = [g for g in self.options if g not in OPTION_GROUPS]
        if bad_groups:
            raise ValueError(
                f"unknown option group(s) {', '.join(bad_groups)}; valid: {', '.join(OPTION_GROUPS)}"
            )


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
def shard_of(vid: str, n: int) -> int:
    """The shard a video belongs to: sha256(vid) mod n (stable across machines and runs)."""
    return int(hashlib.sha256(vid.encode("utf-8")).hexdigest()[:16], 16) % n


def shard_queries(dataset: Dataset, index: int, count: int) -> list[Query]:
    """The queries whose video falls in shard `index` of `count`, in dataset order."""
    return [q for q in dataset.queries if shard_of(q.vid, count) == index]


# -- memory and timing ----------------------------------------------------------------------
def _rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak(reset_ok: bool) -> tuple[int, str]:
    if reset_ok:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM since stage start"
        except OSError:
            pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(peak * scale), "ru_maxrss (process lifetime)"


class StageMeter:
    """Work time and peak memory of one stage.

    `start()` resets the peak counters (GPU, RSS) so the peak includes the model weights;
    `load(backend)` loads a model, once, timing it apart; `stop()` gives the work time
    (elapsed minus loading) and the peak.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.t_start = time.perf_counter()
        self.load_s = 0.0
        self._reset_ok = False

    def start(self) -> StageMeter:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._reset_ok = _rss_reset()
        self.t_start = time.perf_counter()
        self.load_s = 0.0
        return self

    def load(self, backend: Any) -> None:
        """Load `backend`'s model if it is not yet loaded (first video with frames)."""
        if getattr(backend, "_model", None) is None and hasattr(backend, "load"):
            t = time.perf_counter()
            backend.load()
            self.load_s += time.perf_counter() - t

    def stop(self) -> dict[str, Any]:
        rss, rss_method = _rss_peak(self._reset_ok)
        out: dict[str, Any] = {
            "wall_s": time.perf_counter() - self.t_start - self.load_s,
            "load_s": self.load_s,
            "rss_peak_bytes": rss,
        }
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            out["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            out["mem_method"] = "torch.cuda.max_memory_allocated"
            out["device_label"] = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        else:
            out["peak_mem_bytes"] = rss
            out["mem_method"] = rss_method
            out["device_label"] = self.device
        return out


def _maybe_crash(stage: str, processed: int) -> None:
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return
    name, _, n = spec.rpartition(":")
    if name == stage and processed >= int(n):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _device_of(backend: Any) -> str:
    from harness.backends.base import resolve_device

    return resolve_device(getattr(backend, "device_name", None))


def _chunks(seq: Sequence[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(seq), n):
        yield list(seq[i : i + n])


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
        from harness.backends import load_backends

        load_backends()
        self.cfg = config
        self.cache = cache
        self.log = log or sys.stderr
        ds = dataset or load_dataset(config.dataset, config.data_root)
        if config.limit is not None:
            ds = ds.subset(config.limit)
        self.dataset = ds
        self.name = ds.name
        self.family = family(ds.name)
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
        self._check_names()
        self.report = BuildReport(ds.name, f"{config.shard[0]}/{config.shard[1]}")
        self._processed: dict[str, int] = defaultdict(int)
        self._backends: dict[str, Any] = {}
        self._source: Any = None

    def _check_names(self) -> None:
        """Fail before any work when a named backend does not exist (lists valid names)."""
        from harness.backends import CAPTIONERS, DECODERS, FRAME_FILTERS, REWRITERS
        from harness.producers import captioners as caption_presets

        st = set(self.cfg.stages)
        if "rewrite" in st:
            REWRITERS.get(self.cfg.rewriter)
        if st & {"frame_filter", "captions_aware"}:
            FRAME_FILTERS.get(self.cfg.frame_filter)
        uses_captions = bool(st & {"captions_agnostic", "captions_aware"}) or (
            "frame_filter" in st and self.cfg.frame_filter == "caption-text")
        if uses_captions and self.cfg.captioner not in caption_presets():
            raise ValueError(f"unknown caption backbone {self.cfg.captioner!r}; valid: "
                             f"{', '.join(sorted(caption_presets()))}")
        if st & {"captions_agnostic", "captions_aware"}:
            CAPTIONERS.get(self.cfg.captioner)
        if st & {"frames", "frame_filter", "captions_agnostic", "captions_aware"}:
            DECODERS.get(self.cfg.decoder)
            if self.cfg.fallback_decoder:
                DECODERS.get(self.cfg.fallback_decoder)
        if "frames" in st and self.cfg.videos is None:
            raise ValueError("stage 'frames' needs --videos (a folder of <vid>.mp4/.mkv/.webm/.avi)")
        for p in self.cfg.pairs if "rewrite" in st else ():
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
        if "rewrite" not in self._backends:
            from harness.backends import REWRITERS

            spec = {"type": self.cfg.rewriter, "model": self.cfg.rewriter_model,
                    "revision": self.cfg.rewriter_revision, **self._common(), **self._opts("rewrite")}
            self._backends["rewrite"] = REWRITERS.build(spec)
        return self._backends["rewrite"]

    @property
    def frame_filter(self) -> Any:
        if "frame_filter" not in self._backends:
            from harness.backends import FRAME_FILTERS

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
        if "captions" not in self._backends:
            from harness.backends import CAPTIONERS

            spec = {"type": self.cfg.captioner, "model": self.cfg.caption_model,
                    **self._common(), **self._opts("captions")}
            self._backends["captions"] = CAPTIONERS.build(spec)
        return self._backends["captions"]

    @property
    def source(self) -> Any:
        if self._source is None:
            from harness.backends import DECODERS
            from harness.backends.frames import FrameSource, FrameStore

            opts = {"fps": FPS, "max_side": self.cfg.max_side, **self._opts("frames")}
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
        from tqdm.auto import tqdm

        tqdm.write(msg, file=self.log)

    def _bar(self, total: int, desc: str, unit: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=self.log, dynamic_ncols=True,
                    disable=not self.cfg.progress, mininterval=1.0)

    def _frames(self, vid: str, rep: StageReport) -> Any:
        from harness.backends import VideoError

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
        self._processed[stage] += len(rows)
        _maybe_crash(stage, self._processed[stage])
        self.cache.put_many(producer, rows)
        rep.done += len(rows)
        rep.failed += sum(1 for r in rows if r[2] == "failed")

    def _record(self, producer: Producer, rep_items: int, m: dict[str, Any], meta: dict[str, Any]) -> None:
        if rep_items <= 0:
            return
        meta = {**meta, "load_s": m["load_s"], "mem_method": m["mem_method"],
                "rss_peak_bytes": m["rss_peak_bytes"], "dataset": self.name,
                "shard": self.report.shard, "batch_size": self.cfg.batch_size}
        self.cache.record_timing(producer, rep_items, m["wall_s"], m["peak_mem_bytes"],
                                 m["device_label"], meta)

    # -- stages -----------------------------------------------------------------------------
    def run(self) -> BuildReport:
        for stage in RUN_ORDER:
            if stage in self.cfg.stages:
                t = time.perf_counter()
                rep = getattr(self, f"stage_{stage}")()
                rep.seconds = time.perf_counter() - t
                self.report.stages.append(rep)
        return self.report

    def stage_embeddings(self) -> StageReport:
        """Embed every text list a run of this shard reads, so `granalign run` needs no
        other step after a build (the same work as `granalign cache embed`)."""
        from harness.embed import build_embedder, embed_dataset

        embedder = build_embedder({"type": self.cfg.embedder, "model": self.cfg.embedder_model},
                                  device=self.cfg.device)
        shard = Dataset(self.name, tuple(self.queries), self.dataset.source)
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

    def stage_rewrite(self) -> StageReport:
        rep = StageReport("rewrite", items=len(self.texts) * len(self.cfg.pairs))
        items = [query_item(q) for q in self.texts]
        todo = {p: self.cache.missing(self.rewrite_producer(p), items) for p in self.cfg.pairs}
        rep.cached = rep.items - sum(len(t) for t in todo.values())
        if not any(todo.values()):
            return rep
        rw = self.rewriter
        device = _device_of(rw)
        for pair, idx in todo.items():
            if not idx:
                continue
            producer = self.rewrite_producer(pair)
            # each pair measures its own time and peak; the weights stay loaded (and counted)
            meter = StageMeter(device).start()
            meter.load(rw)
            done_before = rep.done
            with self._bar(len(idx), f"rewrite pair {pair}", "query") as bar:
                for batch in _chunks(idx, rw.batch_size):
                    results = rw.rewrite([self.texts[i].query for i in batch], pair)
                    rows = [(items[i], r.value, r.status, r.meta) for i, r in zip(batch, results, strict=True)]
                    self._commit("rewrite", producer, rows, rep)
                    bar.update(len(batch))
            n = rep.done - done_before
            self._record(producer, n, meter.stop(), {"queries": n, "unit": "query", "pair": pair})
        return rep

    def stage_frame_filter(self) -> StageReport:
        rep = StageReport("frame_filter", items=len(self.vq))
        ff = self.frame_filter
        producer = self.frame_filter_producer()
        items = [video_query_item(self.name, q) for q in self.vq]
        todo = self.cache.missing(producer, items)
        rep.cached = rep.items - len(todo)
        if not todo:
            return rep
        by_vid: dict[str, list[int]] = defaultdict(list)
        for i in todo:
            by_vid[self.vq[i].vid].append(i)
        if not ff.needs_frames:
            rep.note = f"STAND-IN: {ff.model_id}"
            return self._frame_filter_from_captions(ff, producer, items, by_vid, rep)
        meter = StageMeter(_device_of(ff)).start()
        with self._bar(len(todo), "frame filter", "query") as bar:
            for vid, idx in by_vid.items():
                frames = self._frames(vid, rep)
                if frames is not None:
                    meter.load(ff)
                    scores = ff.score_video(frames, [self.vq[i].query for i in idx])
                    rows = [(items[i], s, "ok", {"n_frames": len(frames)}) for i, s in zip(idx, scores, strict=True)]
                    self._commit("frame_filter", producer, rows, rep)
                bar.update(len(idx))
        self._record(producer, rep.done, meter.stop(), {"queries": rep.done, "unit": "query"})
        return rep

    def _frame_filter_from_captions(self, ff: Any, producer: Producer, items: list[dict[str, Any]],
                                    by_vid: dict[str, list[int]], rep: StageReport) -> StageReport:
        cap_p = ff.caption_source()
        meter = StageMeter(_device_of(ff)).start()
        meta = ff.meta()
        with self._bar(sum(len(v) for v in by_vid.values()), "frame filter (caption-text)", "query") as bar:
            for vid, idx in by_vid.items():
                entry = self.cache.get(cap_p, video_item(self.name, vid))
                if entry is None or entry.status != "ok":
                    rep.skipped[vid] = (f"no agnostic captions ({cap_p.backend} / {cap_p.model}) for "
                                        "this video: build or import captions_agnostic first")
                    self._say(f"frame filter: skipping video {vid}: {rep.skipped[vid]}")
                else:
                    meter.load(ff)
                    scores = ff.score_captions(self.cache, list(entry.value), [self.vq[i].query for i in idx])
                    rows = [(items[i], s, "ok", meta) for i, s in zip(idx, scores, strict=True)]
                    self._commit("frame_filter", producer, rows, rep)
                bar.update(len(idx))
        self._record(producer, rep.done, meter.stop(), {"queries": rep.done, "unit": "query"})
        return rep

    def stage_captions_agnostic(self) -> StageReport:
        rep = StageReport("captions_agnostic", items=len(self.videos))
        cap = self.captioner
        producer = self.caption_producer("agnostic")
        vids = list(self.videos)
        items = [video_item(self.name, v) for v in vids]
        todo = self.cache.missing(producer, items)
        rep.cached = rep.items - len(todo)
        if not todo:
            return rep
        meter = StageMeter(_device_of(cap)).start()
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
        self._record(producer, rep.done, meter.stop(), {"queries": queries, "unit": "video"})
        return rep

    def stage_captions_aware(self) -> StageReport:
        rep = StageReport("captions_aware", items=len(self.vq))
        cap = self.captioner
        producer = self.caption_producer("aware")
        ff_p = self.frame_filter_producer()
        items = [video_query_item(self.name, q) for q in self.vq]
        todo = self.cache.missing(producer, items)
        rep.cached = rep.items - len(todo)
        if not todo:
            return rep
        from harness.backends import candidate_frames

        scores = self.cache.get_many(ff_p, [items[i] for i in todo])
        by_vid: dict[str, list[int]] = defaultdict(list)
        for i in todo:
            entry = scores.get(ff_p.key(items[i]))
            if entry is None or entry.status != "ok":
                vid = self.vq[i].vid
                if vid in self.report.videos_skipped:
                    rep.skipped[vid] = self.report.videos_skipped[vid]
                else:
                    rep.skipped[f"{vid} / {self.vq[i].query!r}"] = (
                        f"no frame scores from {ff_p.backend} / {ff_p.model}: run stage frame_filter first"
                    )
                continue
            by_vid[self.vq[i].vid].append(i)
        if not by_vid:
            return rep
        meter = StageMeter(_device_of(cap)).start()
        with self._bar(sum(len(v) for v in by_vid.values()), "aware captions", "query") as bar:
            for vid, idx in by_vid.items():
                frames = self._frames(vid, rep)
                if frames is not None:
                    meter.load(cap)
                rows = []
                for i in idx if frames is not None else []:
                    s = scores[ff_p.key(items[i])].value
                    if len(s) != len(frames):
                        rep.skipped[f"{vid} / {self.vq[i].query!r}"] = (
                            f"{len(s)} frame scores but {len(frames)} frames"
                        )
                        continue
                    cand = candidate_frames(s, self.cfg.k_max)
                    rows.append((items[i], {"frames": cand, "captions": cap.aware(frames, cand, self.vq[i].query)},
                                 "ok", {"n_frames": len(frames), "prompt": cap.aware_prompt(self.vq[i].query)}))
                self._commit("captions_aware", producer, rows, rep)
                bar.update(len(idx))
        self._record(producer, rep.done, meter.stop(), {"queries": rep.done, "unit": "query"})
        return rep


def build_cache(config: BuildConfig, cache: Cache | None = None, dataset: Dataset | None = None,
                log: TextIO | None = None) -> BuildReport:
    """Run the builder (library entry point of `granalign cache build`)."""
    return CacheBuilder(config, cache or Cache(), dataset, log).run()


# -- efficiency (Table 4) -------------------------------------------------------------------
def _frame_timings(cache: Cache) -> list[dict[str, Any]]:
    path = cache.root / FRAME_TIMINGS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            r["meta"] = json.dumps(r.get("meta", {}))
            rows.append(r)
    return rows


def efficiency_rows(cache: Cache) -> list[dict[str, Any]]:
    """Time per query and peak memory per stage, from the builder's timing records.

    One row per (stage, backend, model, device), summed over runs and shards: `items`,
    `queries`, `wall_s`, `s_per_item`, `s_per_query` (InT share, seconds), `peak_mem_gb`
    (GMU, GiB = 2**30 bytes; the largest over runs), `mem_method`, `online`. Then one row
    `stage="total"` for the stages a query needs at run time (rewrite, frame filter, aware
    captions; agnostic captions are made offline, once per video): InT is the sum of their
    time per query, GMU the largest of their peaks (the stages run one after another).
    """
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in [*cache.timings(), *_frame_timings(cache)]:
        meta = json.loads(r["meta"]) if isinstance(r["meta"], str) else dict(r["meta"] or {})
        key = (r["stage"], r["backend"], r["model"], r["device"])
        g = groups.setdefault(key, {"stage": r["stage"], "backend": r["backend"], "model": r["model"],
                                    "device": r["device"], "items": 0, "queries": 0, "wall_s": 0.0,
                                    "peak_mem_bytes": None, "mem_method": meta.get("mem_method", ""),
                                    "runs": 0})
        g["items"] += int(r["items"])
        g["queries"] += int(meta.get("queries", r["items"]))
        g["wall_s"] += float(r["wall_s"])
        g["runs"] += 1
        if r["peak_mem_bytes"] is not None:
            g["peak_mem_bytes"] = max(g["peak_mem_bytes"] or 0, int(r["peak_mem_bytes"]))
    order = {s: i for i, s in enumerate(("frames", "variants", "frame_scores", "captions_agnostic",
                                         "captions_aware"))}
    rows = []
    for g in sorted(groups.values(), key=lambda g: (order.get(g["stage"], 99), g["backend"], g["model"])):
        peak = g.pop("peak_mem_bytes")
        g["s_per_item"] = g["wall_s"] / g["items"] if g["items"] else None
        g["s_per_query"] = g["wall_s"] / g["queries"] if g["queries"] else None
        g["peak_mem_gb"] = peak / 2**30 if peak is not None else None
        g["online"] = g["stage"] in ONLINE_STAGES
        rows.append(g)
    online = [r for r in rows if r["online"] and r["s_per_query"] is not None]
    if online:
        peaks = [r["peak_mem_gb"] for r in online if r["peak_mem_gb"] is not None]
        rows.append({
            "stage": "total", "backend": "+".join(r["backend"] for r in online),
            "model": "", "device": ", ".join(dict.fromkeys(r["device"] for r in online)),
            "items": None, "queries": None, "wall_s": sum(r["wall_s"] for r in online),
            "mem_method": "", "runs": None, "s_per_item": None,
            "s_per_query": sum(r["s_per_query"] for r in online),
            "peak_mem_gb": max(peaks) if peaks else None, "online": True,
        })
    return rows


def format_efficiency(rows: list[dict[str, Any]]) -> list[str]:
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    out = [f"{'stage':<18} {'backend':<16} {'items':>7} {'s/query':>9} {'peak GB':>8}  online  device / model"]
    for r in rows:
        out.append(
            f"{r['stage']:<18} {r['backend'][:16]:<16} {num(r['items'], 'd'):>7} "
            f"{num(r['s_per_query'], '.3f'):>9} {num(r['peak_mem_gb'], '.2f'):>8}  "
            f"{'yes' if r['online'] else 'no':<6}  {r['device']}" + (f" / {r['model']}" if r["model"] else "")
        )
    return out


# -- command line ---------------------------------------------------------------------------
def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard should be i/N (e.g. 0/4), got {value!r}") from None
    return i, n


def _parse_options(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for v in values:
        key, sep, raw = v.partition("=")
        group, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--opt should be GROUP.KEY=VALUE (groups: {', '.join(OPTION_GROUPS)}), got {v!r}")
        out[group][name] = yaml.safe_load(raw) if raw else ""
    return dict(out)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    stages = tuple(_csv(args.stages)) if args.stages else STAGES
    try:
        pairs = tuple(int(p) for p in _csv(args.pairs))
    except ValueError:
        raise ValueError(f"--pairs should be numbers like 1,2,3, got {args.pairs!r}") from None
    return BuildConfig(
        dataset=args.dataset, videos=args.videos, stages=stages, rewriter=args.rewriter,
        rewriter_model=args.rewriter_model, rewriter_model_key=args.rewriter_model_key,
        rewriter_revision=args.rewriter_revision, pairs=pairs, frame_filter=args.frame_filter,
        frame_filter_model=args.frame_filter_model, frame_filter_model_key=args.frame_filter_model_key,
        captioner=args.captioner, caption_model=args.caption_model,
        caption_model_key=args.caption_model_key, decoder=args.decoder,
        fallback_decoder=None if args.fallback_decoder in ("", "none") else args.fallback_decoder,
        frames_dir=args.frames_dir, max_side=args.max_side or None, device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, shard=args.shard, limit=args.limit,
        data_root=args.data_root, k_max=args.k_max, embedder=args.embedder,
        embedder_model=args.embedder_model, options=_parse_options(args.opt),
        progress=not args.no_progress,
    )


def cmd_build(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    cache = Cache(args.cache)
    report = build_cache(config, cache)
    print("\n".join(report.lines()))
    if args.bench:
        print("\n".join(format_efficiency(efficiency_rows(cache))))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    cache = Cache(args.cache, readonly=True)
    rows = efficiency_rows(cache)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no timings recorded in {cache.root} (run `granalign cache build` first)")
    else:
        print(f"cache: {cache.root}  (InT = s/query of the 'total' row, GMU = its peak GB)")
        print("\n".join(format_efficiency(rows)))
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    from harness.cache_cli import add_cache_arg

    p = cache.add_parser(
        "build", help="run the models (rewriter, frame filter, captioners) and fill the cache",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_cache_arg(p)
    p.add_argument("--dataset", required=True, help="registered dataset, e.g. qvhighlights:val")
    p.add_argument("--data-root", default=None, help="benchmark files folder ($GRANALIGN_DATA)")
    p.add_argument("--videos", default=None, help="folder of <vid>.mp4/.mkv/.webm/.avi")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list (default all): {','.join(STAGES)}")
    p.add_argument("--embedder", default="minilm", help="text embedder for the embeddings stage")
    p.add_argument("--embedder-model", default=None, help="embedder model id or folder (default: the local MiniLM)")
    p.add_argument("--rewriter", default="hf-causal-lm", help="rewriter backend name")
    p.add_argument("--rewriter-model", default=DEFAULT_REWRITER_MODEL,
                   help="hub id, local folder or .gguf file")
    p.add_argument("--rewriter-model-key", default=None,
                   help="model id written in the cache keys (default: --rewriter-model as given)")
    p.add_argument("--rewriter-revision", default="", help="hub revision (part of the key)")
    p.add_argument("--pairs", default="1,2,3,4,5", help="instruction pairs to rewrite with")
    p.add_argument("--frame-filter", default=DEFAULT_FRAME_FILTER, help="frame filter backend name")
    p.add_argument("--frame-filter-model", default=None,
                   help="for clip-vit-b32: [open_clip:]ARCH[/PRETRAINED] (default ViT-B-32/openai)")
    p.add_argument("--frame-filter-model-key", default=None, help="model id written in the cache keys")
    p.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="caption backbone: qwen2.5-vl | blip2")
    p.add_argument("--caption-model", default=None, help="hub id or local folder (default: the preset's)")
    p.add_argument("--caption-model-key", default=None, help="model id written in the cache keys")
    p.add_argument("--k-max", type=int, default=K_MAX, help="percent of frames given aware captions")
    p.add_argument("--decoder", default="decord", help="frame decoder: decord | pyav")
    p.add_argument("--fallback-decoder", default="pyav", help="tried when the decoder fails ('none': off)")
    p.add_argument("--frames-dir", default=None, help="frame store folder (default <cache>/frames)")
    p.add_argument("--max-side", type=int, default=640, help="longest frame side in pixels (0: native)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--batch-size", type=int, default=None, help="frames / queries per batch")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1), help="i/N: this machine's share")
    p.add_argument("--limit", type=int, default=None, help="first N queries of the dataset only")
    p.add_argument("--opt", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help=f"backend option (groups: {', '.join(OPTION_GROUPS)}), e.g. rewrite.max_new_tokens=256")
    p.add_argument("--bench", action="store_true", help="print time per query and peak memory after")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_build)

    b = top.add_parser("bench", help="time per query and peak memory per stage (Table 4 inputs)")
    add_cache_arg(b)
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_bench)


def efficiency_summary(cache: Cache, cfg: Any, n_queries: int) -> dict[str, float] | Any:
    """Table 4's InT (s per query) and GMU (GB) for a run config, from recorded timings.

    Sums the time per query of the online stages the config reads (its rewriter, frame
    filter and aware captioner) and takes their largest peak memory. A stage without a
    timing record makes the cell `missing: timings/<stage>/<backend>`: the numbers exist
    only where `granalign cache build` ran on this cache.
    """
    from harness.producers import caption_producer, frame_filter_producer, rewrite_producer
    from harness.tables import Missing

    try:
        wanted = [
            rewrite_producer(cfg.rewriter, cfg.rewriter_model, cfg.instruction_pair),
            frame_filter_producer(cfg.frame_filter, cfg.frame_filter_model),
            caption_producer(cfg.captions, "aware", cfg.caption_model),
        ]
    except ValueError as e:
        return Missing(f"missing: timings ({e})")
    rows = efficiency_rows(cache)
    total, peak = 0.0, None
    for p in wanted:
        match = [r for r in rows if (r["stage"], r["backend"], r["model"]) == (p.stage, p.backend, p.model)
                 and r.get("s_per_query") is not None]
        if not match:
            return Missing(f"missing: timings/{p.stage}/{p.backend}")
        total += sum(r["s_per_query"] for r in match)
        peaks = [r["peak_mem_gb"] for r in match if r.get("peak_mem_gb") is not None]
        if peaks:
            peak = max(peaks + ([peak] if peak is not None else []))
    out = {"InT_s": round(total, 3)}
    if peak is not None:
        out["GMU_GB"] = round(peak, 2)
    return out
