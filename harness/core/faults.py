"""Test hooks that stop the process at an exact point, to test what a crash leaves behind.

`GRANALIGN_TEST_FAULT=<name>` raises at every `fault_point(name)`; `<name>@<n>` raises at the
n-th time that point is reached in this process; `<name>@<n>:kill` kills the process there
with SIGKILL instead (what `kill -9` or the OOM killer does: no `finally`, no cleanup).
Unset (always, outside tests) it costs a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

FAULT_ENV = "GRANALIGN_TEST_FAULT"
_hits: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """Raised by `fault_point` when the tests ask for it."""


def fault_point(name: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    wanted, _, nth = spec.partition("@")
    if wanted != name:
        return
    nth, _, how = nth.partition(":")
    _hits[name] += 1
    if not nth or _hits[name] == int(nth):
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"injected fault at {name} ({FAULT_ENV}={spec})")
