"""`granalign eval` (a prediction file against a dataset's ground truth) and `granalign
compare` (two prediction files on the same queries, with paired bootstrap tests)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.cli.common import bounded_int, nonnegative_int
from harness.core.errors import DataError
from harness.core.io import json_safe
from harness.data.spec import dataset_spec, load_dataset
from harness.eval.bootstrap import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    MAX_RESAMPLES,
    compare,
    intervals,
)
from harness.eval.predictions import load_predictions
from harness.eval.protocols import PerQuery, brief, protocol_of

SYNTHETIC_NOTE = "  (SYNTHETIC demo data: not a benchmark result)"


def format_metrics(metrics: Mapping[str, Any], dataset: str) -> str:
    """The `brief` metrics as an aligned two-column table, plus any notes."""
    flat = brief(metrics)
    width = max((len(k) for k in flat), default=10)
    head = f"dataset: {dataset}" + (SYNTHETIC_NOTE if dataset_spec(dataset).synthetic else "")
    lines = [head] + [f"{k:<{width}}  {v:7.2f}" for k, v in flat.items()]
    lines += [f"note: {n}" for n in metrics.get("notes", [])]
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root)
    pq: PerQuery = {}
    result = _evaluate(args.dataset, dataset.queries, args.pred, pq)
    if args.ci:
        result["intervals"] = {k: [v.low, v.high] for k, v in intervals(pq, args.resamples, args.seed).items()}
    if args.json:
        print(json.dumps(json_safe(result), indent=2, allow_nan=False))
        return 0
    print(f"predictions: {args.pred} ({len(dataset)} queries)")
    print(format_metrics(result, args.dataset))
    if args.ci:
        print(f"95 % bootstrap intervals ({args.resamples} resamples of the queries, seed {args.seed}):")
        width = max(len(k) for k in result["intervals"])
        for k, (lo, hi) in result["intervals"].items():
            print(f"  {k:<{width}}  [{lo:6.2f}, {hi:6.2f}]  width {hi - lo:.2f}")
    return 0


def _prediction_file(path: str) -> Path:
    p = Path(path)
    return p / "predictions.jsonl" if p.is_dir() else p


def _evaluate(dataset: str, queries: Any, path: str, per_query: PerQuery) -> dict[str, Any]:
    """Read and score one prediction file; an error about its rows names the file."""
    file = _prediction_file(path)
    preds = load_predictions(file)
    try:
        return protocol_of(dataset).evaluate(queries, preds, per_query=per_query)
    except DataError as e:
        raise DataError(f"{file}: {e}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root)
    per_query: list[PerQuery] = []
    for path in (args.a, args.b):
        pq: PerQuery = {}
        _evaluate(args.dataset, dataset.queries, path, pq)
        per_query.append(pq)
    result = compare(per_query[0], per_query[1], args.resamples, args.seed)
    if args.json:
        print(json.dumps({k: vars(v) for k, v in result.items()}, indent=2))
        return 0
    print(f"dataset: {args.dataset} ({len(dataset)} queries); A: {args.a}; B: {args.b}")
    print(f"B - A with its 95 % interval and paired bootstrap p-value ({args.resamples} resamples "
          f"of the queries, seed {args.seed})")
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  {'A':>7}  {'B':>7}  {'B - A':>7}  {'interval':>17}  {'p':>7}")
    for key, c in result.items():
        verdict = "" if c.significant else "  not significant"
        print(f"{key:<{width}}  {c.a:7.2f}  {c.b:7.2f}  {c.diff:+7.2f}  [{c.low:+6.2f}, {c.high:+6.2f}]  "
              f"{c.p_text():>7}{verdict}")
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registered split, e.g. qvhighlights:val")
    p.add_argument("--pred", required=True, help="predictions in the official QVHighlights jsonl format")
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.add_argument("--ci", action="store_true", help="95 %% bootstrap intervals of the brief metrics")
    p.add_argument("--resamples", type=bounded_int(MAX_RESAMPLES), default=DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples (1000; at most {MAX_RESAMPLES})")
    p.add_argument("--seed", type=nonnegative_int, default=DEFAULT_SEED, help="resampling seed (0)")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default: $GRANALIGN_DATA)")
    p.set_defaults(func=cmd_eval)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registered split, e.g. qvhighlights:val")
    p.add_argument("a", help="predictions jsonl (or a run folder holding predictions.jsonl)")
    p.add_argument("b", help="the other predictions (B - A is reported)")
    p.add_argument("--resamples", type=bounded_int(MAX_RESAMPLES), default=DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples (1000; at most {MAX_RESAMPLES})")
    p.add_argument("--seed", type=nonnegative_int, default=DEFAULT_SEED, help="resampling seed (0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default: $GRANALIGN_DATA)")
    p.set_defaults(func=cmd_compare)


ARGUMENTS = {"eval": _eval_arguments, "compare": _compare_arguments}
