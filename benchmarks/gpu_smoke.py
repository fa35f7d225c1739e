"""GPU smoke test of the cache builder: every stage on tiny models, in bf16, on CUDA.

    .venv/bin/python benchmarks/gpu_smoke.py            # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu_smoke.py --allow-cpu  # the same checks on the CPU

Builds the tiny random-weight models of the paper's classes (`harness.builder.backends.
testing`: LLaMA-3-, Qwen2.5-VL- and BLIP-2-shaped, an open_clip ViT with QuickGELU), writes
a made-up dataset of two 640x360 videos and three queries, and runs `granalign cache
build`'s builder through every stage (frames, variants, frame_scores, captions_agnostic,
captions_aware, embeddings), once with Qwen2.5-VL and once with BLIP-2 captions. It prints,
per stage, the time, the peak memory and what was resident when the stage's meter started,
and checks that each stage's peak holds no model of an earlier stage:

- the stage's meter started with no other backend loaded (`resident_at_start`), and
- no model unloaded before it is still alive (`leaked_at_start`, by weak reference), and
- on CUDA, the bytes allocated when the meter started are at most what stays allocated
  once the build is over and no model is loaded (cuBLAS workspaces), plus `SLACK`.

Exit status 0 when every check passes, 1 when one fails, 0 with one line "skipped" where
there is no CUDA device (CI never has one). Not a timing benchmark: tiny models say
nothing about the paper's timings (docs/gpu.md has the estimates).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from harness.builder.backends import testing as tiny  # noqa: E402
from harness.builder.builder import CacheBuilder  # noqa: E402
from harness.builder.metering import efficiency_rows  # noqa: E402
from harness.cache.store import Cache  # noqa: E402
from harness.config.build import BuildConfig  # noqa: E402

SLACK = 1 << 20  # bytes
OWNER = {"variants": "rewriter", "frame_scores": "frame_filter", "captions_agnostic": "captioner",
         "captions_aware": "captioner"}
QUERIES = [
    {"qid": 1, "vid": "vidA", "query": "A person picking up a pencil from the desk", "duration": 20},
    {"qid": 2, "vid": "vidA", "query": "a red scene turns blue", "duration": 20},
    {"qid": 3, "vid": "vidB", "query": "A yellow screen", "duration": 12},
]


def make_world(root: Path) -> tuple[Path, Path, tiny.TinyModels]:
    models = tiny.build_tiny_models(root / "models")
    data = root / "data" / "qvhighlights"
    data.mkdir(parents=True, exist_ok=True)
    rows = [{**q, "relevant_windows": [[0, 4]]} for q in QUERIES]
    (data / "highlight_val_release.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255)]
    tiny.make_video(root / "videos" / "vidA.mp4", colours * 2, size=(640, 360))
    tiny.make_video(root / "videos" / "vidB.mp4", colours[:3] * 2, size=(640, 360))
    return root / "data", root / "videos", models


def run_build(root: Path, device: str, dtype: str, captioner: str) -> tuple[list[str], list[str]]:
    data, videos, models = make_world(root)
    cache = Cache(root / f"cache-{captioner}")
    cfg = BuildConfig(
        dataset="qvhighlights:val", data_root=str(data), videos=str(videos),
        rewriter_model=str(models.llama), frame_filter_model=models.clip_spec,
        captioner=captioner, caption_model=str(models.qwen_vl if captioner == "qwen2.5-vl" else models.blip2),
        device=device, dtype=dtype, progress=False,
        options={"rewriter": {"max_new_tokens": 16, "attempts": 1}, "captioner": {"max_new_tokens": 16}},
    )
    builder = CacheBuilder(cfg, cache, log=io.StringIO())
    t = time.perf_counter()
    report = builder.run()
    lines = [f"build with {captioner}: {time.perf_counter() - t:.1f} s in all", *report.lines()]
    failures = [] if builder.loaded_models() == {} else [f"{captioner}: models still loaded after the build"]
    rows = efficiency_rows(cache)
    metas = {r["stage"]: json.loads(r["meta"]) for r in cache.timings()}
    order = [s.stage for s in report.stages]
    # what stays allocated with no model at all (cuBLAS workspaces, allocator blocks), once
    # reference cycles are collected (a SentenceTransformer sits in one until then)
    gc.collect()
    idle = int(torch.cuda.memory_allocated()) if device == "cuda" else 0
    for stage in order:
        meta = metas.get(stage)
        if stage not in OWNER or meta is None:
            continue
        resident = set(meta["resident_at_start"])
        others = resident - {OWNER[stage]}
        if others:
            failures.append(f"{captioner}/{stage}: started with {sorted(others)} still loaded")
        if meta["leaked_at_start"]:
            failures.append(f"{captioner}/{stage}: unloaded {meta['leaked_at_start']} still alive")
        at_start = meta.get("allocated_at_start_bytes")
        if at_start is not None and not resident and at_start > idle + SLACK:
            failures.append(f"{captioner}/{stage}: {at_start} bytes allocated at start, "
                            f"{idle} with no model loaded")
        lines.append(f"  {stage:<18} resident at start: {sorted(resident) or 'nothing'}; allocated at "
                     f"start: {at_start if at_start is not None else 'n/a (CPU)'} bytes; loaded here: "
                     f"{meta['model_bytes'] or 'nothing new'}")
    for r in rows:
        if r["stage"] == "total" or r["s_per_query"] is None:
            continue
        peak = "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb'] * 1024:.1f} MiB"
        lines.append(f"  {r['stage']:<18} {r['s_per_query']:.4f} s/query  peak {peak}  ({r['mem_method']})")
    return failures, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU")
    ap.add_argument("--dtype", default="bfloat16", help="model dtype on the GPU (default bfloat16)")
    ap.add_argument("--workdir", default=None, help="folder for models, videos and caches (default: temp)")
    args = ap.parse_args(argv)
    if torch.cuda.is_available():
        device, dtype = "cuda", args.dtype
        print(f"gpu_smoke: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, dtype {dtype}")
    elif args.allow_cpu:
        device, dtype = "cpu", "float32"
        print("gpu_smoke: no CUDA device; running the same checks on the CPU (float32)")
    else:
        print("gpu_smoke: skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        root = Path(args.workdir or tmp)
        failures: list[str] = []
        for captioner in ("qwen2.5-vl", "blip2"):
            f, lines = run_build(root, device, dtype, captioner)
            print("\n".join(lines))
            failures += f
    print("\n".join(f"FAIL {f}" for f in failures) or "PASS: every stage's peak holds its own model only")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
