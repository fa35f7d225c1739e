"""`granalign cache stats`: what is cached, per stage, backend and model."""

from __future__ import annotations

import argparse
import json

from harness.cache import STAGE_LABELS, Cache, default_cache_dir


def add_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", default=None,
        help=f"cache folder (default: $GRANALIGN_CACHE or {default_cache_dir()})",
    )


def cmd_stats(args: argparse.Namespace) -> int:
    cache = Cache(args.cache, readonly=True)
    rows = cache.stats()
    if args.json:
        print(json.dumps({"cache": str(cache.root), "entries": rows}, indent=2))
        return 0
    print(f"cache: {cache.root}")
    if not rows:
        print("(empty)")
        return 0
    print(f"{'stage':<20} {'backend':<22} {'ok':>8} {'failed':>7}  model")
    for r in rows:
        label = STAGE_LABELS.get(r["stage"], r["stage"])
        print(f"{label:<20} {r['backend']:<22} {r['ok']:>8} {r['failed']:>7}  {r['model']}")
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    p = cache.add_parser("stats", help="list cached entries per stage and backend")
    add_cache_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)
