"""`granalign`: one command line; each command's arguments and code live in one module of this
package, imported only when that command runs.

`COMMANDS` names every command, the module that declares its arguments and runs it, and its
one-line help. The parser names every command, but fills in the arguments of the one the
command line names only, so `granalign --help` imports no command module and `granalign eval`
imports the evaluator, not the builder's model backends, Optuna or MLflow. Each command
module maps its commands to a function that adds their arguments (`ARGUMENTS`); that
function's `set_defaults(func=...)` is what runs.

Every error the harness anticipates (`HarnessError`: bad data, configs, names) is printed
as one line, `granalign: error: ...`, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from harness import __version__
from harness.core.errors import HarnessError, user_message
from harness.core.processes import Terminated, exit_status, signals_handled

# the groups of sub-commands: name -> (metavar of its sub-command, help)
GROUPS = {"cache": ("CACHE_COMMAND", "inspect, import, embed and build cached model outputs")}

# command words -> (the module that declares its arguments and runs it, help); --help order
COMMANDS: dict[str, tuple[str, str]] = {
    "cache stats": ("harness.cli.cache", "list cached entries per stage and backend"),
    "cache merge": ("harness.cli.cache",
                    "join caches built on separate machines (--shard i/N) into one (resumable)"),
    "cache import": ("harness.cli.cache",
                     "import public caption / paraphrase releases into the cache (resumable)"),
    "cache embed": ("harness.cli.cache",
                    "embed every text list a dataset's runs need (queries, variants, captions)"),
    "cache build": ("harness.cli.build",
                    "run the models (rewriter, frame filter, captioners) and fill the cache"),
    "bench": ("harness.cli.build", "time per query and peak memory per stage (Table 4 inputs)"),
    "run": ("harness.cli.run", "score every query of a config's dataset from the cache, evaluate"),
    "eval": ("harness.cli.eval", "score a prediction jsonl against a dataset's ground truth"),
    "compare": ("harness.cli.eval",
                "two prediction files on the same queries: differences, intervals, p-values"),
    "table": ("harness.cli.study", "reproduce a paper table (Optuna study over its rows, MLflow-tracked)"),
    "sweep": ("harness.cli.study", "an Optuna hyperparameter sweep over a YAML search space"),
    "ls": ("harness.cli.ls", "list the registries (datasets, pairings, recipes, backends, ...) and their names"),
}


def named_command(argv: Sequence[str]) -> str | None:
    """The command words a command line names (`eval`, `cache build`), or None.

    The top-level options (`-h`, `--version`) take no value and a group's only option is
    `-h`, so the command is the first word that is not an option, and a group's sub-command
    the next one."""
    words = [a for a in argv if not a.startswith("-")][:2]
    if not words:
        return None
    return " ".join(words) if words[0] in GROUPS else words[0]


def declare_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add `command`'s arguments to its parser (this imports the module that runs it)."""
    module = importlib.import_module(COMMANDS[command][0])
    module.ARGUMENTS[command](parser)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `argv`, the arguments of the command it names only
    (the others are named, with their help, and take no arguments)."""
    parser = argparse.ArgumentParser(
        prog="granalign",
        description="GranAlign harness: zero-shot video moment retrieval on cached model outputs.",
    )
    parser.add_argument("--version", action="version", version=f"granalign {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    groups: dict[str, argparse._SubParsersAction] = {}
    wanted = named_command(argv) if argv is not None else None
    for command, (_module, help_text) in COMMANDS.items():
        group, _, name = command.rpartition(" ")
        if group and group not in groups:
            metavar, group_help = GROUPS[group]
            subs = top.add_parser(group, help=group_help).add_subparsers(dest=f"{group}_command", metavar=metavar)
            subs.required = True
            groups[group] = subs
        p = (groups[group] if group else top).add_parser(name, help=help_text)
        if argv is None or command == wanted:
            declare_arguments(p, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Every anticipated error (bad input, a full or read-only disk, a damaged database, a
    server that does not answer) leaves here as one line and exit status 2; Ctrl-C as
    status 130 and SIGTERM as 143, after the command's cleanup (worker processes stopped:
    `harness.core.processes`); anything else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    stdout = sys.stdout
    sys.stdout = _NamedStdout(stdout)  # type: ignore[assignment]
    # a Ctrl-C that lands in SQLAlchemy's connection reset is logged there, traceback and
    # all, before it is re-raised and reported below as the one line
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    with signals_handled():
        try:
            _check_working_folder()
            args = build_parser(argv).parse_args(argv)
            code = int(args.func(args) or 0)
            sys.stdout.flush()
            return code
        except (KeyboardInterrupt, Terminated) as e:
            what = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
            print(f"granalign: {what}; what was finished is kept, a rerun resumes", file=sys.stderr)
            return exit_status(e)
        except Exception as e:
            message = user_message(e)
            if message is None:
                raise
            print(f"granalign: error: {message}", file=sys.stderr)
            return 2
        finally:
            sys.stdout = stdout


def _check_working_folder() -> None:
    """Relative paths (the default stores, runs/) need a working folder that still exists."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise HarnessError("the current folder no longer exists (deleted after the shell entered it); "
                           "cd to an existing folder and run again") from None


class _NamedStdout:
    """Standard output whose write errors say it is standard output (a full disk under
    `> file`), after which what stays buffered is sent nowhere, so that it cannot fail a
    second time at exit."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            raise self._named(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise self._named(e) from None

    def _named(self, e: OSError) -> OSError:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no real stdout: a test's capture
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        return OSError(e.errno, e.strerror or str(e), "standard output")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
