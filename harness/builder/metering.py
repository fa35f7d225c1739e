"""Time and memory of the builder's stages, and Table 4's figures from them.

Per stage and run the builder records the wall time of the work (model loading excluded,
reported apart as `load_s`) and the peak memory with `Cache.record_timing`. Peak memory is
`torch.cuda.max_memory_allocated` (reset at the start of the stage, so it includes the
weights) on a GPU; on CPU it is the process's peak resident set size after resetting it at
the stage start (Linux `/proc/self/clear_refs` + `VmHWM`), or, where that reset is
impossible, `resource.getrusage` `ru_maxrss`, the peak of the whole process so far (an
upper bound; the record names the method). `efficiency_rows(cache)` turns the records into
per-stage time per query and peak GB; `efficiency_summary` gives one config's InT / GMU.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from harness.cache.producers import caption_producer, frame_filter_producer, rewrite_producer
from harness.cache.store import Cache
from harness.core.results import Missing
from harness.core.stages import ONLINE_STAGES, stage_order

FRAME_TIMINGS = "frame_timings.jsonl"  # the frames stage has no cache entries: its timings live here


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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(peak * scale), "ru_maxrss (process lifetime)"


class StageMeter:
    """Work time and peak memory of one stage.

    `start()` resets the peak counters (GPU, RSS) so the peak includes the model weights;
    `load(backend)` loads a model, once, timing it apart; `stop()` gives the work time
    (elapsed minus loading) and the peak. A reset only moves the baseline to what is
    allocated now, so the builder unloads the previous stage's model first; `resident`
    (backend -> weight bytes in memory when the meter starts) and, on a GPU, the bytes
    allocated at the start are recorded with the stage so a report can show its peak
    holds nothing else; `leaked` names unloaded models that something still holds.
    """

    def __init__(self, device: str, resident: dict[str, int] | None = None,
                 leaked: list[str] | None = None) -> None:
        self.device = device
        self.resident = dict(resident or {})
        self.leaked = list(leaked or [])
        self.t_start = time.perf_counter()
        self.load_s = 0.0
        self.allocated_at_start: int | None = None
        self.loaded: dict[str, int] = {}
        self._reset_ok = False

    def start(self) -> StageMeter:
        if self.device.startswith("cuda"):
            import torch  # lazy: heavy optional (torch)

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.allocated_at_start = int(torch.cuda.memory_allocated(self.device))
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
            self.loaded[getattr(backend, "name", "") or type(backend).__name__] = backend.model_bytes()

    def stop(self) -> dict[str, Any]:
        rss, rss_method = _rss_peak(self._reset_ok)
        out: dict[str, Any] = {
            "wall_s": time.perf_counter() - self.t_start - self.load_s,
            "load_s": self.load_s,
            "rss_peak_bytes": rss,
            "resident_at_start": self.resident,
            "leaked_at_start": self.leaked,
            "allocated_at_start_bytes": self.allocated_at_start,
            "model_bytes": self.loaded,
        }
        if self.device.startswith("cuda"):
            import torch  # lazy: heavy optional (torch)

            torch.cuda.synchronize(self.device)
            out["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            out["mem_method"] = "torch.cuda.max_memory_allocated"
            out["device_label"] = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        else:
            out["peak_mem_bytes"] = rss
            out["mem_method"] = rss_method
            out["device_label"] = self.device
        return out


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
    rows = []
    for g in sorted(groups.values(), key=lambda g: (stage_order(g["stage"]), g["backend"], g["model"])):
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


def efficiency_summary(cache: Cache, cfg: Any, n_queries: int) -> dict[str, float] | Missing:
    """Table 4's InT (s per query) and GMU (GB) for a run's sources, from recorded timings.

    `cfg` names the sources (a `SourceSpec`: rewriter and its model, frame filter, caption
    backbone).
    Sums the time per query of the online stages the config reads (its rewriter, frame
    filter and aware captioner) and takes their largest peak memory. A stage without a
    timing record makes the cell `missing: timings/<stage>/<backend>`: the numbers exist
    only where `granalign cache build` ran on this cache.
    """
    try:
        wanted = [
            rewrite_producer(cfg.rewriter, cfg.rewriter_model, cfg.instruction_pair),
            frame_filter_producer(cfg.frame_filter, cfg.frame_filter_model),
            caption_producer(cfg.captions, "aware", cfg.caption_model),
        ]
    except ValueError as e:
        return Missing(f"timings ({e})")
    rows = efficiency_rows(cache)
    total, peak = 0.0, None
    for p in wanted:
        match = [r for r in rows if (r["stage"], r["backend"], r["model"]) == (p.stage, p.backend, p.model)
                 and r.get("s_per_query") is not None]
        if not match:
            return Missing.stage(f"timings/{p.stage}", p.backend)
        total += sum(r["s_per_query"] for r in match)
        peaks = [r["peak_mem_gb"] for r in match if r.get("peak_mem_gb") is not None]
        if peaks:
            peak = max(peaks + ([peak] if peak is not None else []))
    out = {"InT_s": round(total, 3)}
    if peak is not None:
        out["GMU_GB"] = round(peak, 2)
    return out
