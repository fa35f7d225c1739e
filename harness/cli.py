"""`granalign`: one command, one sub-command per stage of the data flow.

Each stage module contributes its own sub-commands through `add_commands(top, cache)`, so
the command line grows with the library without a central if/elif chain. Modules keep
heavy imports (torch, transformers, mlflow) inside functions, so `granalign --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness import __version__
from harness.data import DataError
from harness.registry import RegistryError

COMMAND_MODULES = (
    "harness.cache_cli",
    "harness.build",
    "harness.pipeline",
    "harness.eval",
    "harness.runner",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="granalign",
        description="GranAlign harness: zero-shot video moment retrieval on cached model outputs.",
    )
    parser.add_argument("--version", action="version", version=f"granalign {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    cache_parser = top.add_parser("cache", help="inspect, import, embed and build cached model outputs")
    cache = cache_parser.add_subparsers(dest="cache_command", metavar="CACHE_COMMAND")
    cache.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(top, cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, RegistryError, FileNotFoundError, ValueError) as e:
        print(f"granalign: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
