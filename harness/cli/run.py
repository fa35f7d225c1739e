"""`granalign run`: one config scored from the cache and evaluated."""

from __future__ import annotations

import argparse
import sys

from harness.cache import open_cache
from harness.cli.common import add_cache_arg, add_substitute_arg, positive_int
from harness.cli.eval import format_metrics
from harness.config import load_config, parse_override
from harness.core.results import MissingInputs
from harness.method.substitutions import parse_substitutions
from harness.runner.trial import run_config


def cmd_run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(s) for s in args.set or [])
    if args.limit is not None:
        overrides["limit"] = args.limit
    cfg = load_config(args.config, overrides)
    cache = open_cache(cfg.dataset, args.cache, readonly=True)  # a synthetic dataset reads its own cache
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



def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("--out", default=None, help="output folder (default runs/<name>-<config hash>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--limit", type=positive_int, default=None, help="first N queries only")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default $GRANALIGN_DATA)")
    add_substitute_arg(p)
    add_cache_arg(p)
    p.set_defaults(func=cmd_run)


ARGUMENTS = {"run": _run_arguments}
