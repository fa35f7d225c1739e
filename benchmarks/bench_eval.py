"""Time the QVHighlights evaluator on the 1550 val queries with the reference predictions.

The evaluator runs inside every sweep trial, so its speed bounds how many configurations a
sweep can score; the official loop-per-query implementation takes about 9 s a run. This
prints the median over several repeats (loading the files is timed separately, once).

    GRANALIGN_DATA=../shared/data .venv/bin/python benchmarks/bench_eval.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

from harness.data import data_root, load_dataset
from harness.eval import evaluate
from harness.eval.predictions import load_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    root = data_root(args.data_root)
    t0 = time.perf_counter()
    dataset = load_dataset("qvhighlights:val", root)
    preds = load_predictions(root / "qvhighlights" / "eval_reference" / "sample_val_preds.jsonl")
    load_s = time.perf_counter() - t0

    evaluate(dataset.name, dataset.queries, preds)  # warm-up
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        result = evaluate(dataset.name, dataset.queries, preds)
        times.append(time.perf_counter() - t)
    print(f"queries: {len(dataset)}  repeats: {args.repeats}")
    print(f"load GT + predictions: {load_s:.3f} s (once)")
    print(
        f"evaluate: median {statistics.median(times):.3f} s  min {min(times):.3f} s  max {max(times):.3f} s"
    )
    print(
        f"MR-full-mAP {result['brief']['MR-full-mAP']}  HL-min-VeryGood-mAP "
        f"{result['brief']['HL-min-VeryGood-mAP']}"
    )


if __name__ == "__main__":
    main()
