"""`granalign`: one command, one sub-command group per module of this package.

Each module contributes its sub-commands through `add_commands(top, cache)`: `cache`
(stats, import, embed, build; bench), `run` (run, eval), `study` (table, sweep), `ls`.
Every error the harness anticipates (`HarnessError`: bad data, configs, names) is printed
as one line, `granalign: error: ...`, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness import __version__
from harness.cli import cache, ls, run, study
from harness.core.errors import user_message

COMMAND_MODULES = (cache, run, study, ls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="granalign",
        description="GranAlign harness: zero-shot video moment retrieval on cached model outputs.",
    )
    parser.add_argument("--version", action="version", version=f"granalign {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    cache_parser = top.add_parser("cache", help="inspect, import, embed and build cached model outputs")
    cache_cmds = cache_parser.add_subparsers(dest="cache_command", metavar="CACHE_COMMAND")
    cache_cmds.required = True
    for module in COMMAND_MODULES:
        module.add_commands(top, cache_cmds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Every anticipated error (bad input, a full or read-only disk, a damaged database)
    leaves here as one line and exit status 2; an interrupt as status 130; anything else is
    a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("granalign: interrupted; what was finished is kept, a rerun resumes", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        print(f"granalign: error: {message}", file=sys.stderr)
        return 2
