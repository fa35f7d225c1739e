"""`granalign`: one command, one sub-command group per module of this package.

Each module contributes its sub-commands through `add_commands(top, cache)`: `cache`
(stats, import, embed, build; bench), `run` (run, eval), `study` (table, sweep), `ls`.
Every error the harness anticipates (`HarnessError`: bad data, configs, names) is printed
as one line, `granalign: error: ...`, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from harness import __version__
from harness.cli import cache, ls, run, study
from harness.core.errors import HarnessError, user_message
from harness.core.processes import Terminated, exit_status, signals_handled

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
    """Every anticipated error (bad input, a full or read-only disk, a damaged database, a
    server that does not answer) leaves here as one line and exit status 2; Ctrl-C as
    status 130 and SIGTERM as 143, after the command's cleanup (worker processes stopped:
    `harness.core.processes`); anything else is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout = sys.stdout
    sys.stdout = _NamedStdout(stdout)  # type: ignore[assignment]
    with signals_handled():
        try:
            _check_working_folder()
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
