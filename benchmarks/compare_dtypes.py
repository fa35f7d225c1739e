"""mpnet in bfloat16 against float32 on the first N QVHighlights val queries.

    GRANALIGN_DATA=../shared/data .venv/bin/python benchmarks/compare_dtypes.py --n 200

Embeds the texts of the first N val queries (their query, paraphrases, spaCy variants and
captions) with all-mpnet-base-v2 in float32 (skipped where the cache already has them; the
bfloat16 matrices must be there already: `make cache-qvh EMBEDDER=mpnet EMBED_ARGS="--dtype
bfloat16"`), then prints the cosine between the two precisions' vectors and the metrics of
one config (default: experiments/best_offline_qvh_v1.yaml) run on those N queries with each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.cache.embedders import (  # noqa: E402
    build_embedder,
    dataset_text_lists,
    embed_dataset,
    embedder_model_id,
)
from harness.cache.store import Cache  # noqa: E402
from harness.config import load_config  # noqa: E402
from harness.data import load_dataset  # noqa: E402
from harness.eval.protocols import brief  # noqa: E402
from harness.runner.trial import InputPool, trial  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="first N val queries")
    ap.add_argument("--config", default=str(REPO / "experiments" / "best_offline_qvh_v1.yaml"))
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()

    cache = Cache(args.cache)
    ds = load_dataset("qvhighlights:val").subset(args.n)
    t0 = time.perf_counter()
    report = embed_dataset(cache, ds, build_embedder("mpnet", dtype="float32"), progress=True)
    print(f"float32 embeddings of {args.n} queries: {report.embedded} lists embedded, "
          f"{report.already_cached} cached, {time.perf_counter() - t0:.0f} s")

    ids = {d: embedder_model_id({"type": "mpnet", "dtype": d}) for d in ("float32", "bfloat16")}
    lists, _ = dataset_text_lists(cache, ds)
    texts = [t for _, t in lists if t]
    a = cache.get_embeddings_many(ids["float32"], texts)
    b = cache.get_embeddings_many(ids["bfloat16"], texts)
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    cos = np.concatenate([np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
                          for x, y in pairs])
    print(f"cosine bfloat16 vs float32 over {cos.size} vectors: min {cos.min():.5f}, mean {cos.mean():.6f}")

    pool = InputPool(Cache(args.cache, readonly=True))
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(args.config, {"embedder": "mpnet", "embedder_dtype": dtype, "limit": args.n})
        out[dtype] = brief(trial(pool.get(cfg), cfg))
    keys = [k for k in out["float32"] if k.startswith(("MR-full", "HL-min-VeryGood"))]
    print(f"\n{'metric':<22} {'float32':>8} {'bfloat16':>8} {'diff':>6}")
    for k in keys:
        f, h = out["float32"][k], out["bfloat16"][k]
        print(f"{k:<22} {f:8.2f} {h:8.2f} {h - f:+6.2f}")
    print(f"largest difference: {max(abs(out['bfloat16'][k] - out['float32'][k]) for k in keys):.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
