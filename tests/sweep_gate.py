"""Seeing sweep workers inside a trial without racing them: each trial of a sweep run with
GRANALIGN_TEST_FAULT=sweep:trial|gate=<file> (`harness.core.faults`) creates `<file>.<pid>`
and then waits until <file> exists. A test that finds a worker's file knows that worker is
inside a trial and stays there until the test opens the gate, so a kill or an interrupt
lands mid-trial every time, on a slow machine as on a fast one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def waiting_at(gate: Path, n: int, alive: Callable[[], bool], timeout: float = 240) -> list[int]:
    """The pids of `n` workers waiting at the gate, polled (a generous bound) while `alive()`."""
    deadline = time.monotonic() + timeout
    while True:
        pids = sorted(int(p.suffix[1:]) for p in gate.parent.glob(gate.name + ".*"))
        if len(pids) >= n:
            return pids[:n]
        assert alive() and time.monotonic() < deadline, f"{len(pids)} of {n} workers reached the trial gate"
        time.sleep(0.1)
