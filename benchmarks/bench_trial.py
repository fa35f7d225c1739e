"""Time one full trial (scores, proposals, NMS, metrics) on QVHighlights val, warm cache.

The runner calls the trial function thousands of times in a sweep, so this is the number
that decides how fast sweeps go. Reading the cache once (`InputPool.get`) is timed apart.

    GRANALIGN_DATA=../shared/data python benchmarks/bench_trial.py --cache DIR [--repeats 7]

The cache must hold the MiniGPT-v2 captions and paraphrases of QVHighlights val, embedded
(`make cache-qvh`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from harness.cache.store import Cache
from harness.config import load_config
from harness.eval import brief
from harness.runner.trial import InputPool, trial

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cache = Cache(args.cache)
    configs = {
        "q-Ca (GranAlign recipe)": load_config(REPO / "experiments/granalign_qvh_minigptv2.yaml"),
        "qp-Ca, m=5 (GranAlign recipe)": load_config(
            REPO / "experiments/granalign_qvh_minigptv2.yaml", {"pairing": "q-Ca+qp-Ca", "m": 5}
        ),
        "VTG-GPT recipe": load_config(REPO / "experiments/vtg_gpt_qvh.yaml"),
    }
    pool = InputPool(cache, args.data_root)
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        prep = pool.get(cfg)
        read = time.perf_counter() - t0
        for highlights in (False, True):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                metrics = trial(prep, cfg, highlights=highlights)
                times.append(time.perf_counter() - t0)
            b = brief(metrics)
            kind = "with HL" if highlights else "sweep  "
            print(
                f"{name:32s} queries={len(prep.queries)}  read once {read:6.2f} s  {kind} trial median "
                f"{statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
                f"n={args.repeats})  R1@0.5={b['MR-full-R1@0.5']:.2f} mAP={b['MR-full-mAP']:.2f}"
            )
            read = 0.0


if __name__ == "__main__":
    main()
