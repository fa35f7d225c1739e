"""Trial cost against dataset size: a synthetic ActivityNet-sized benchmark.

Builds prepared inputs directly (random similarities, no cache), with video lengths drawn
like ActivityNet Captions' (10 s to 10 min, most between 1 and 4 min, at 0.5 fps: up to 300
frames) and one to three GT windows per query, at 1.5k, 5k and 17k queries, and times a
sweep trial (no highlight metrics) of the GranAlign recipe (q-Ca) and the VTG-GPT recipe
(q + 5 paraphrases), with the peak memory the trial allocates (tracemalloc, numpy included).
The cost should grow about linearly with queries x frames.

    python benchmarks/bench_scale.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from harness.config import ExperimentConfig
from harness.core.query import Query
from harness.method.kinds import SourceSpec
from harness.method.sources import Prepared
from harness.runner.trial import trial

SIZES = (1500, 5000, 17000)


def synthetic(n: int, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    durations = np.clip(rng.lognormal(np.log(120), 0.6, n), 10, 600)
    n_frames = np.ceil(durations / 2).astype(np.int64)
    t = int(n_frames.max())
    queries = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        starts = rng.uniform(0, durations[i] * 0.8, k)
        windows = tuple((float(s), float(min(durations[i], s + rng.uniform(2, max(3.0, durations[i] * 0.4))))) for s in starts)
        queries.append(Query(i, f"v{i // 3}", f"query {i}", float(durations[i]), windows))
    pad = np.arange(t)[None, None, :] >= n_frames[:, None, None]
    sims = {}
    for pair, m in ((("q", "Ca"), 1), (("qp", "Ca"), 5)):
        # a smooth curve per variant, a bump where the first GT window is, noise
        base = rng.normal(0.25, 0.05, (n, m, t)).astype(np.float32)
        centre = np.array([q.windows[0][0] / 2 for q in queries])[:, None, None]
        base += 0.3 * np.exp(-((np.arange(t)[None, None, :] - centre) / 8.0) ** 2).astype(np.float32)
        base[np.broadcast_to(pad, base.shape)] = np.nan
        sims[pair] = base
    spec = SourceSpec("activitynet:val_1", "synthetic", None, "none", None, "none", "none", 1, "none")
    return Prepared("activitynet:val_1 (synthetic)", tuple(queries), n_frames, sims, None, "synthetic", spec, True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    configs = {
        "q-Ca (GranAlign)": ExperimentConfig(dataset="activitynet:val_1", pairing="q-Ca"),
        "q+5qp (VTG-GPT)": ExperimentConfig(dataset="activitynet:val_1", recipe="vtg-gpt", pairing="q-Ca+qp-Ca",
                                            m=5, lam=0.5, tau=0.95, span_score="selected"),
    }
    rows = []
    for n in SIZES:
        prep = synthetic(n)
        frames = int(prep.n_frames.sum())
        for name, cfg in configs.items():
            trial(prep, cfg, highlights=False)  # the curves, made once per config (a sweep's first trial)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                trial(prep, cfg, highlights=False)
                times.append(time.perf_counter() - t0)
            tracemalloc.start()
            trial(prep, cfg, highlights=False)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            med = statistics.median(times)
            rows.append((name, n, frames, med, peak))
            print(f"{name:18s} queries={n:6d} frames={frames:8d}  trial median {med:.3f} s "
                  f"({1e6 * med / frames:.2f} us/frame)  peak {peak / 2**20:7.1f} MiB", flush=True)
    for name in configs:
        mine = [r for r in rows if r[0] == name]
        (_, n0, f0, t0, _), (_, n1, f1, t1, _) = mine[0], mine[-1]
        print(f"{name}: {n1 / n0:.1f}x the queries ({f1 / f0:.1f}x the frames) cost {t1 / t0:.1f}x the time")


if __name__ == "__main__":
    main()
