"""`granalign cache build` and `granalign bench`: run the models (rewriter, frame filter,
captioners) to fill the cache, and report the builder's time and memory (Table 4)."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from harness.builder.batching import SHARD_BUCKETS
from harness.builder.builder import STAGES, build_cache
from harness.builder.metering import efficiency_rows, format_efficiency
from harness.cache.backbones import DEFAULT_BACKBONE
from harness.cache.producers import DEFAULT_FRAME_FILTER, DEFAULT_REWRITER_MODEL
from harness.cache.store import Cache
from harness.cli.common import add_cache_arg, nonnegative_int, positive_int
from harness.config.build import OPTION_GROUPS, BuildConfig
from harness.core.constants import K_MAX
from harness.core.yaml_io import parse_yaml


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard should be i/N (e.g. 0/4), got {value!r}") from None
    return i, n


def _parse_options(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for v in values:
        key, sep, raw = v.partition("=")
        group, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--opt should be GROUP.KEY=VALUE (groups: {', '.join(OPTION_GROUPS)}), got {v!r}")
        out[group][name] = parse_yaml(raw, f"--opt {v!r}") if raw else ""
    return dict(out)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    stages = tuple(_csv(args.stages)) if args.stages else STAGES
    try:
        pairs = tuple(int(p) for p in _csv(args.pairs))
    except ValueError:
        raise ValueError(f"--pairs should be numbers like 1,2,3, got {args.pairs!r}") from None
    return BuildConfig(
        dataset=args.dataset, videos=args.videos, stages=stages, rewriter=args.rewriter,
        rewriter_model=args.rewriter_model, rewriter_model_key=args.rewriter_model_key,
        rewriter_revision=args.rewriter_revision, pairs=pairs, frame_filter=args.frame_filter,
        frame_filter_model=args.frame_filter_model, frame_filter_model_key=args.frame_filter_model_key,
        captioner=args.captioner, caption_model=args.caption_model,
        caption_model_key=args.caption_model_key, decoder=args.decoder,
        fallback_decoder=None if args.fallback_decoder in ("", "none") else args.fallback_decoder,
        frames_dir=args.frames_dir, max_side=args.max_side or None, device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, shard=args.shard, limit=args.limit,
        data_root=args.data_root, k_max=args.k_max, embedder=args.embedder,
        embedder_model=args.embedder_model, options=_parse_options(args.opt),
        progress=not args.no_progress,
    )


def cmd_build(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    cache = Cache(args.cache)
    report = build_cache(config, cache)
    print("\n".join(report.lines()))
    if args.bench:
        print("\n".join(format_efficiency(efficiency_rows(cache))))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    cache = Cache(args.cache, readonly=True, must_exist=True)
    rows = efficiency_rows(cache)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no timings recorded in {cache.root} (run `granalign cache build` first)")
    else:
        print(f"cache: {cache.root}  (InT = s/query of the 'total' row, GMU = its peak GB)")
        print("\n".join(format_efficiency(rows)))
    return 0


def _build_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0] if __doc__ else None
    add_cache_arg(p)
    p.add_argument("--dataset", required=True, help="registered dataset, e.g. qvhighlights:val")
    p.add_argument("--data-root", default=None, help="benchmark files folder ($GRANALIGN_DATA)")
    p.add_argument("--videos", default=None, help="folder of <vid>.mp4/.mkv/.webm/.avi")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list (default all): {','.join(STAGES)}")
    p.add_argument("--embedder", default="minilm", help="text embedder for the embeddings stage")
    p.add_argument("--embedder-model", default=None, help="embedder model id or folder (default: the local MiniLM)")
    p.add_argument("--rewriter", default="hf-causal-lm", help="rewriter backend name")
    p.add_argument("--rewriter-model", default=DEFAULT_REWRITER_MODEL,
                   help="hub id, local folder or .gguf file")
    p.add_argument("--rewriter-model-key", default=None,
                   help="model id written in the cache keys (default: --rewriter-model as given)")
    p.add_argument("--rewriter-revision", default="", help="hub revision (part of the key)")
    p.add_argument("--pairs", default="1",
                   help="instruction pairs to rewrite with (default 1; Table 13 needs 1,2,3,4,5)")
    p.add_argument("--frame-filter", default=DEFAULT_FRAME_FILTER, help="frame filter backend name")
    p.add_argument("--frame-filter-model", default=None,
                   help="for clip-vit-b32: [open_clip:]ARCH[/PRETRAINED] (default ViT-B-32/openai)")
    p.add_argument("--frame-filter-model-key", default=None, help="model id written in the cache keys")
    p.add_argument("--captioner", default=DEFAULT_BACKBONE, help="caption backbone: qwen2.5-vl | blip2")
    p.add_argument("--caption-model", default=None, help="hub id or local folder (default: the preset's)")
    p.add_argument("--caption-model-key", default=None, help="model id written in the cache keys")
    p.add_argument("--k-max", type=positive_int, default=K_MAX, help="percent of frames given aware captions")
    p.add_argument("--decoder", default="decord", help="frame decoder: decord | pyav")
    p.add_argument("--fallback-decoder", default="pyav", help="tried when the decoder fails ('none': off)")
    p.add_argument("--frames-dir", default=None, help="frame store folder (default <cache>/frames)")
    p.add_argument("--max-side", type=nonnegative_int, default=640, help="longest frame side in pixels (0: native)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="frames / queries per batch (default by backend and device: captioner 32"
                        " frames on a GPU, 4 on a CPU; rewriter 16 / 4 queries; CLIP 64 frames);"
                        " every shard of one build must use the same")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1),
                   help=f"i/N: this machine's share (N <= {SHARD_BUCKETS})")
    p.add_argument("--limit", type=positive_int, default=None, help="first N queries of the dataset only")
    p.add_argument("--opt", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help=f"backend option (groups: {', '.join(OPTION_GROUPS)}), e.g. rewriter.max_new_tokens=256")
    p.add_argument("--bench", action="store_true", help="print time per query and peak memory after")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_build)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    add_cache_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench)


ARGUMENTS = {"cache build": _build_arguments, "bench": _bench_arguments}
