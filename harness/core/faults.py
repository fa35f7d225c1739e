"""Test hooks that stop, fail or slow the process at an exact point: the one mechanism.

`GRANALIGN_TEST_FAULT` holds comma-separated entries `point[#key][@n][|action]`:

- `point`: the name a `fault_point(point, key)` call gives (`table-row:computed`, ...);
- `#key`: only where the call's key equals it (a table row's name, a builder stage);
- `@n`: only the n-th time that entry matches in this process (else every time);
- `|action`: `raise` (the default: `InjectedFault`), `kill` (SIGKILL, what `kill -9` or the
  OOM killer does: no `finally`, no cleanup), `sleep=SECONDS` (a slow step) or `gate=FILE`
  (create `FILE.<pid>`, then wait until FILE exists, at most 10 minutes: a test knows this
  process is here and stays here until it opens the gate, so a kill lands at this point on
  a slow machine as on a fast one).

Unset (always, outside tests) a call costs a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FAULT_ENV = "GRANALIGN_TEST_FAULT"
_hits: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """Raised by `fault_point` when the tests ask for it."""


@dataclass(frozen=True)
class _Entry:
    text: str
    point: str
    key: str | None
    nth: int | None
    action: str


def _parse(text: str) -> _Entry:
    rest, _, action = text.partition("|")
    rest, _, nth = rest.partition("@")
    point, sep, key = rest.partition("#")
    return _Entry(text, point, key if sep else None, int(nth) if nth else None, action or "raise")


def _wait_at_gate(gate: Path, limit: float = 600.0) -> None:
    Path(f"{gate}.{os.getpid()}").touch()
    deadline = time.monotonic() + limit
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def fault_point(point: str, key: str = "") -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for entry in map(_parse, spec.split(",")):
        if entry.point != point or (entry.key is not None and entry.key != key):
            continue
        _hits[entry.text] += 1
        if entry.nth is not None and _hits[entry.text] != entry.nth:
            continue
        if entry.action == "kill":
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if entry.action.startswith("sleep="):
            time.sleep(float(entry.action.removeprefix("sleep=")))
            continue
        if entry.action.startswith("gate="):
            _wait_at_gate(Path(entry.action.removeprefix("gate=")))
            continue
        raise InjectedFault(f"injected fault at {point}{'#' + key if key else ''} ({FAULT_ENV}={spec})")
