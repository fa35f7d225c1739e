"""Arguments several commands share (light: every command module imports this)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from harness.core.stores import default_cache_dir


def add_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", default=None,
        help=f"cache folder (default: $GRANALIGN_CACHE or {default_cache_dir()})",
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registered split, e.g. qvhighlights:val")
    p.add_argument("--data-root", default=None, help="benchmark files (default: $GRANALIGN_DATA)")


def add_substitute_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--substitute", action="append", metavar="KIND=KIND",
        help="run configs whose inputs are missing with a named stand-in, e.g. Cq=Ca (aware "
             "captions replaced by agnostic ones); every number computed so is marked",
    )


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (counts of trials, workers, resamples, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An argparse type: a whole number >= 0 (seeds, sizes where 0 means 'native')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def bounded_int(high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to `high` (a documented upper bound)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {high}, got {value}")
        return value

    return parse


def seconds(high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds > 0 and at most `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"expected seconds > 0 and at most {high:g}, got {text}")
        return value

    return parse
