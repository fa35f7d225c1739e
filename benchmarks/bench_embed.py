"""Benchmark: import the QVHighlights val release, then embed it cold and warm.

    .venv/bin/python benchmarks/bench_embed.py --cache /tmp/granalign-bench-cache

Imports MiniGPT-v2 captions and Baichuan2 paraphrases into `--cache` (skipped when already
there), then times `embed_dataset` twice: cold (every list encoded; 113,620 captions,
about 97.5k distinct) and warm (a fresh embedder that must find everything cached and never
load the model). Targets on the 2-core dev machine: cold under 8 min, warm under 10 s.
If the cache already holds the embeddings, the "cold" figure is not cold and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.cache.embedders import build_embedder, embed_dataset  # noqa: E402
from harness.cache.importers import import_captions, import_paraphrases  # noqa: E402
from harness.cache.store import Cache  # noqa: E402
from harness.data import load_dataset  # noqa: E402

COLD_TARGET_S = 8 * 60
WARM_TARGET_S = 10.0


def _loadavg() -> str:
    """The machine is shared: the load average says how much of it the figure had."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="cache folder (outside the repo)")
    ap.add_argument("--data-root", default=None, help="benchmark files (default: $GRANALIGN_DATA)")
    ap.add_argument("--dataset", default="qvhighlights:val")
    ap.add_argument("--device", default=None, help="cpu, cuda (default: best available)")
    ap.add_argument("--batch-size", type=int, default=None, help="texts per forward pass")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    progress = not args.no_progress

    dataset = load_dataset(args.dataset, args.data_root)
    cache = Cache(args.cache)
    figures: dict[str, object] = {
        "dataset": dataset.name, "cache": str(cache.root), "host": platform.node(),
        "python": platform.python_version(),
    }
    for name, fn in (
        ("captions", lambda: import_captions(cache, dataset, "minigptv2", root=args.data_root, progress=progress)),
        ("paraphrases", lambda: import_paraphrases(cache, dataset, root=args.data_root, progress=progress)),
    ):
        rep = fn()
        print("\n".join(rep.lines()), flush=True)
        figures[f"import_{name}_s"] = round(rep.seconds, 3)
        figures[f"import_{name}_imported"] = rep.imported

    embedder = build_embedder("minilm", device=args.device, batch_size=args.batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    cold = embed_dataset(cache, dataset, embedder, progress=progress)
    cold_s, cold_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    print("\n".join(cold.lines()), flush=True)

    fresh = build_embedder("minilm", device=args.device, batch_size=args.batch_size)
    t0 = time.perf_counter()
    warm = embed_dataset(cache, dataset, fresh, progress=progress)
    warm_s = time.perf_counter() - t0
    print("\n".join(warm.lines()), flush=True)

    really_cold = cold.already_cached == 0
    figures.update(
        {
            "model_id": embedder.model_id, "device": str(getattr(embedder, "device", None)),
            "batch_size": embedder.batch_size, "lists": cold.lists,
            "lists_embedded_cold": cold.embedded, "rows_written": cold.rows_written,
            "distinct_texts_encoded": cold.texts_encoded, "cold_s": round(cold_s, 2),
            "cold_cpu_s": round(cold_cpu_s, 1),  # all threads; less noisy on a shared machine
            "cold_was_cold": really_cold,
            "ms_per_distinct_text": round(1000 * cold_s / max(cold.texts_encoded, 1), 3),
            "warm_s": round(warm_s, 3), "warm_embedded": warm.embedded,
            "warm_loaded_model": bool(getattr(fresh, "loaded", False)),
        }
    )
    print()
    print(f"cold: {cold_s:8.1f} s  ({cold.embedded} lists, {cold.rows_written} rows, "
          f"{cold.texts_encoded} distinct texts; target < {COLD_TARGET_S} s: "
          f"{'ok' if cold_s < COLD_TARGET_S else 'MISSED'})"
          + f"; process CPU {cold_cpu_s:.0f} s, load average {_loadavg()}"
          + ("" if really_cold else "  [NOT cold: the cache already held some lists]"))
    print(f"warm: {warm_s:8.2f} s  ({warm.already_cached} lists cached, {warm.embedded} embedded, "
          f"model loaded: {figures['warm_loaded_model']}; target < {WARM_TARGET_S} s: "
          f"{'ok' if warm_s < WARM_TARGET_S else 'MISSED'})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures))
    return 0 if warm.embedded == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
