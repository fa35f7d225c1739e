"""Benchmark: each embedder backend's speed, its cosine to float32 torch, and what it does
to the val metrics of the reference configs, in one run.

    GRANALIGN_DATA=../shared/data .venv/bin/python benchmarks/bench_embed.py \\
        --cache /tmp/bench-cache [--ref-cache .granalign/cache] [--embed] [--sample 2000]

Per embedder (`--embedders`, default minilm,mpnet) and backend (`--backends`, default all):

1. speed and agreement on a seeded sample of `--sample` distinct texts of the split (the
   cache's own text lists: captions, queries, paraphrases, variants): texts/s of wall time
   and per CPU-second of this process (less noisy on a shared machine), the load average,
   the export's one-off cost, and the min and mean cosine of each vector to float32 torch's;
2. with `--embed`, the whole split embedded with every backend whose matrices `--cache`
   lacks (the cold cost of a split: seconds and texts/s);
3. the metrics of experiments/granalign_qvh_minigptv2.yaml, vtg_gpt_qvh.yaml and
   best_offline_qvh_v1.yaml run with that embedder and backend, and their differences to
   float32 torch's (read from `--ref-cache`, default `--cache`); a backend may be an
   embedder's default only if no difference of R1@0.5, R1@0.7, mAP@0.5 or mAP@avg
   exceeds `TOLERANCE` on any config (the verdict line says which and by how much);
4. with `--floor`, how long the whole split's float32 arithmetic takes on this machine at
   the matrix-multiply rate it reaches: the split's tokens, padded as the runtimes pad them
   (length-sorted batches), times the model's matrix-multiply FLOPs a token (read from its
   config), over numpy's float32 matmul rate at the model's feed-forward shapes on all this
   process's cores. An estimate of the floor, not a proof: a runtime's own kernels may beat
   numpy's BLAS a little, and the cores' peak (FLOPs a cycle times the clock) is higher.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.cache.embed_backends import BACKENDS, TORCH  # noqa: E402
from harness.cache.embedders import build_embedder, dataset_text_lists, embed_dataset  # noqa: E402
from harness.cache.store import Cache  # noqa: E402
from harness.config import load_config  # noqa: E402
from harness.core.results import MissingInputs  # noqa: E402
from harness.data import load_dataset  # noqa: E402
from harness.eval.protocols import brief  # noqa: E402
from harness.runner.trial import InputPool, trial  # noqa: E402

CONFIGS = ("granalign_qvh_minigptv2.yaml", "vtg_gpt_qvh.yaml", "best_offline_qvh_v1.yaml")
METRICS = {"R1@0.5": "MR-full-R1@0.5", "R1@0.7": "MR-full-R1@0.7", "mAP@0.5": "MR-full-mAP@0.5",
           "mAP@avg": "MR-full-mAP"}
TOLERANCE = 0.1  # points: what a faster backend may move a reference metric and be a default


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def speed(embedder: str, backends: list[str], texts: list[str], batch_size: int | None) -> list[dict[str, Any]]:
    """texts/s and cosine to float32 torch of each backend on `texts` (one process)."""
    rows, ref = [], None
    for backend in [TORCH, *[b for b in backends if b != TORCH]]:
        emb = build_embedder(embedder, backend=backend, device="cpu", batch_size=batch_size)
        t0 = time.perf_counter()
        emb.load()  # the export on first use (once per machine), and the runtime's start
        load_s = time.perf_counter() - t0
        emb.encode(texts[:64])  # warm-up: first-batch allocations and kernel choices
        t0, c0 = time.perf_counter(), time.process_time()
        x = emb.encode(texts)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if ref is None:
            ref = x
        cos = np.sum(x * ref, axis=1)
        rows.append({"embedder": embedder, "backend": backend, "model_id": emb.model_id,
                     "load_s": round(load_s, 1), "texts": len(texts),
                     "texts_per_s": round(len(texts) / wall, 1), "texts_per_cpu_s": round(len(texts) / cpu, 1),
                     "cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "load": _load()})
        r = rows[-1]
        print(f"  {backend:<14} {r['texts_per_s']:7.1f} texts/s  {r['texts_per_cpu_s']:7.1f} texts/CPU-s  "
              f"cos min {r['cos_min']:.5f} mean {r['cos_mean']:.6f}  load/export {load_s:5.1f} s  "
              f"(load average {r['load']})", flush=True)
    return rows


def sgemm_rate(rows: int, hidden: int, inner: int, seconds: float = 3.0) -> float:
    """float32 GFLOP/s of numpy's matrix multiply at a transformer's feed-forward shapes, all cores."""
    rng = np.random.default_rng(0)
    x, w1, w2 = (rng.standard_normal(s, dtype=np.float32) for s in ((rows, hidden), (hidden, inner), (inner, hidden)))
    x @ w1  # first-call allocations
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        (x @ w1) @ w2
        n += 1
    return 4 * rows * hidden * inner * n / (time.perf_counter() - t0) / 1e9


def floor(embedder: str, texts: list[str], batch: int) -> dict[str, Any]:
    """The split's matrix-multiply FLOPs and their float32 time at numpy's matmul rate here."""
    st = build_embedder(embedder, backend=TORCH, device="cpu").load()
    cfg = st[0].auto_model.config
    h, inner, layers = int(cfg.hidden_size), int(cfg.intermediate_size), int(cfg.num_hidden_layers)
    lengths = np.sort([len(ids) for ids in st.tokenizer(texts, truncation=True,
                                                         max_length=int(st.max_seq_length))["input_ids"]])
    padded = np.array([lengths[i : i + batch].max() for i in range(0, len(lengths), batch)])
    sizes = np.array([len(lengths[i : i + batch]) for i in range(0, len(lengths), batch)])
    tokens = int((padded * sizes).sum())
    # a layer: Q, K, V, output projections (4 h^2) and the feed-forward (2 h i) a token, and
    # the attention scores and their use (2 n h a token, n the padded length), 2 FLOPs a MAC
    flops = 2 * layers * (tokens * (4 * h * h + 2 * h * inner) + int((sizes * padded * padded).sum()) * 2 * h)
    rate = sgemm_rate(int(batch * np.mean(padded)), h, inner)
    row = {"embedder": embedder, "texts": len(texts), "tokens": int(lengths.sum()), "padded_tokens": tokens,
           "tflop": round(flops / 1e12, 1), "sgemm_gflops": round(rate, 1), "floor_s": round(flops / 1e9 / rate)}
    print(f"  floor: {len(texts)} texts, {row['tokens']} tokens ({tokens} padded in batches of {batch}), "
          f"{row['tflop']} TFLOP of matrix multiplies ({layers} layers, hidden {h}, feed-forward {inner}); "
          f"at numpy's float32 matmul rate here, {row['sgemm_gflops']} GFLOP/s: {row['floor_s']} s "
          f"({row['floor_s'] / 60:.1f} min) for the split, {len(texts) / (flops / 1e9 / rate):.0f} "
          f"texts/s (load average {_load()})", flush=True)
    return row


def metrics(cfg_path: Path, embedder: str, backend: str, cache: Cache, limit: int | None) -> dict[str, float] | str:
    overrides: dict[str, Any] = {"embedder": embedder, "embedder_backend": backend, "embedder_dtype": "float32"}
    if limit:
        overrides["limit"] = limit
    cfg = load_config(cfg_path, overrides)
    try:
        prepared = InputPool(cache).get(cfg)
    except MissingInputs as e:
        return f"missing ({str(e).splitlines()[0][:100]})"
    out = brief(trial(prepared, cfg))
    return {k: float(out[v]) for k, v in METRICS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="cache with the split imported (and the backends' matrices)")
    ap.add_argument("--ref-cache", default=None, help="cache holding float32 torch's matrices (default --cache)")
    ap.add_argument("--dataset", default="qvhighlights:val")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--embedders", default="minilm,mpnet")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--sample", type=int, default=2000, help="distinct texts timed and compared (0: skip)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--embed", action="store_true", help="embed the whole split with each backend it lacks")
    ap.add_argument("--limit", type=int, default=None, help="metrics on the first N queries only")
    ap.add_argument("--floor", action="store_true",
                    help="the least float32 time for the split on this machine (FLOPs over matmul rate)")
    ap.add_argument("--no-metrics", action="store_true", help="skip the reference configs' metrics")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    dataset = load_dataset(args.dataset, args.data_root)
    cache = Cache(args.cache)
    ref_cache = Cache(args.ref_cache, readonly=True) if args.ref_cache else cache
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    figures: dict[str, Any] = {"dataset": dataset.name, "speed": [], "embed": [], "metrics": [], "floor": []}
    lists, _ = dataset_text_lists(cache, dataset)
    distinct = sorted({t for _, texts in lists for t in texts})
    print(f"{dataset.name}: {len(distinct)} distinct texts in {len(lists)} lists; {os.cpu_count()} CPUs; "
          f"load average {_load()}", flush=True)
    for embedder in [e.strip() for e in args.embedders.split(",") if e.strip()]:
        print(f"\n== {embedder}", flush=True)
        if args.floor:
            figures["floor"].append(floor(embedder, distinct, args.batch_size or 64))
        if args.sample:
            sample = random.Random(0).sample(distinct, min(args.sample, len(distinct)))
            figures["speed"] += speed(embedder, backends, sample, args.batch_size)
        if args.embed:
            for backend in backends:
                emb = build_embedder(embedder, backend=backend, batch_size=args.batch_size)
                t0, c0 = time.perf_counter(), time.process_time()
                rep = embed_dataset(cache, dataset, emb, progress=False)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if rep.texts_encoded:
                    print(f"  embedded {dataset.name} with {backend}: {wall:.0f} s, {rep.texts_encoded} texts, "
                          f"{rep.texts_encoded / wall:.1f} texts/s, {rep.texts_encoded / cpu:.1f} texts/CPU-s "
                          f"(load average {_load()})", flush=True)
                    figures["embed"].append({"embedder": embedder, "backend": backend, "seconds": round(wall, 1),
                                             "texts": rep.texts_encoded, "cpu_s": round(cpu, 1)})
        if args.no_metrics:
            continue
        print(f"  {'config':<28} {'backend':<14} " + " ".join(f"{k:>8}" for k in METRICS) + "  max |diff|")
        worst: dict[str, float] = {}
        for name in CONFIGS:
            path = REPO / "experiments" / name
            ref = metrics(path, embedder, TORCH, ref_cache, args.limit)
            for backend in [TORCH, *[b for b in backends if b != TORCH]]:
                got = ref if backend == TORCH else metrics(path, embedder, backend, cache, args.limit)
                if isinstance(got, str) or isinstance(ref, str):
                    print(f"  {name:<28} {backend:<14} {got if isinstance(got, str) else 'torch ' + str(ref)}")
                    worst[backend] = float("nan")
                    continue
                diff = {k: got[k] - ref[k] for k in METRICS}
                top = max(abs(d) for d in diff.values())
                worst[backend] = max(worst.get(backend, 0.0), top)
                cells = " ".join(f"{got[k]:8.2f}" for k in METRICS) if backend == TORCH else \
                    " ".join(f"{diff[k]:+8.2f}" for k in METRICS)
                print(f"  {name:<28} {backend:<14} {cells}  {'' if backend == TORCH else f'{top:.2f}'}", flush=True)
                figures["metrics"].append({"embedder": embedder, "backend": backend, "config": name,
                                           "metrics": got, "diff": diff})
        for backend, top in worst.items():
            if backend == TORCH:
                continue
            verdict = "not measured (matrices missing)" if np.isnan(top) else (
                f"within {TOLERANCE} on all three configs (largest {top:.2f}): may be the default"
                if top <= TOLERANCE + 1e-9 else f"MISSES the {TOLERANCE} bound by {top - TOLERANCE:.2f} "
                f"(largest difference {top:.2f}): opt-in only")
            print(f"  verdict {embedder}/{backend}: {verdict}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
