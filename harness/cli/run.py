"""`granalign run` (one config from the cache, evaluated) and `granalign eval` (a prediction
file against a dataset's ground truth)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from harness.cache import open_cache
from harness.cli.common import add_cache_arg, add_substitute_arg
from harness.config import load_config, parse_override
from harness.core.results import MissingInputs
from harness.data.spec import dataset_spec, load_dataset
from harness.eval.predictions import load_predictions
from harness.eval.protocols import brief, evaluate
from harness.method.substitutions import parse_substitutions
from harness.runner.trial import run_config

SYNTHETIC_NOTE = "  (SYNTHETIC demo data: not a benchmark result)"


def format_metrics(metrics: Mapping[str, Any], dataset: str) -> str:
    """The `brief` metrics as an aligned two-column table, plus any notes."""
    flat = brief(metrics)
    width = max((len(k) for k in flat), default=10)
    head = f"dataset: {dataset}" + (SYNTHETIC_NOTE if dataset_spec(dataset).synthetic else "")
    lines = [head] + [f"{k:<{width}}  {v:7.2f}" for k, v in flat.items()]
    lines += [f"note: {n}" for n in metrics.get("notes", [])]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(s) for s in args.set or [])
    if args.limit is not None:
        overrides["limit"] = args.limit
    cfg = load_config(args.config, overrides)
    cache = open_cache(cfg.dataset, args.cache)  # a synthetic dataset reads its own cache
    try:
        res = run_config(cfg, args.out, cache, args.data_root, parse_substitutions(args.substitute or []))
    except MissingInputs as e:
        print(f"granalign run: {e}", file=sys.stderr)
        return 3
    if res["info"]["substitutions"]:
        print(f"inputs missing: computed with the substitution(s) {res['info']['substitutions']} "
              f"(pairing {res['info']['pairing']})")
    if res["metrics"] is None:
        print(f"dataset: {cfg.dataset}: no metrics computed ({res['missing']})")
    else:
        print(format_metrics(res["metrics"], cfg.dataset))
    print(f"config hash {res['info']['config_hash']}  cache fingerprint {res['info']['cache_fingerprint'][:16]}")
    written = ["predictions.jsonl", *([res["info"]["submission"]] if "submission" in res["info"] else []),
               *(["metrics.json"] if res["metrics"] is not None else [])]
    print(f"wrote {', '.join(written)} in {res['out']} ({res['info']['seconds']['total']} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root)
    preds = load_predictions(args.pred)
    result = evaluate(args.dataset, dataset.queries, preds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"predictions: {args.pred} ({len(dataset)} queries)")
        print(format_metrics(result, args.dataset))
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    p = top.add_parser("run", help="score every query of a config's dataset from the cache, evaluate")
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("--out", default=None, help="output folder (default runs/<name>-<config hash>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--limit", type=int, default=None, help="first N queries only")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default $GRANALIGN_DATA)")
    add_substitute_arg(p)
    add_cache_arg(p)
    p.set_defaults(func=cmd_run)

    p = top.add_parser("eval", help="score a prediction jsonl against a dataset's ground truth")
    p.add_argument("--dataset", required=True, help="registered split, e.g. qvhighlights:val")
    p.add_argument("--pred", required=True, help="predictions in the official QVHighlights jsonl format")
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default: $GRANALIGN_DATA)")
    p.set_defaults(func=cmd_eval)
