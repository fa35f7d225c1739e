"""Child processes and signals: the one path for every command with worker or writer processes.

A terminal's Ctrl-C sends SIGINT to the whole process group, and a service manager's stop
sends SIGTERM to the command's process alone; either way the command decides, and no
process outlives it:

- the command's process (`signals_handled`, around every command of the CLI): SIGTERM
  raises `Terminated` as SIGINT raises KeyboardInterrupt, so the same `finally` blocks run
  (children stopped, MLflow parent runs ended, temp files removed); a second SIGINT or
  SIGTERM while that cleanup runs kills the children and exits at once;
- a child (`Children.start`): spawned (nothing inherited but what is passed), started with
  SIGINT ignored (so Ctrl-C never prints a traceback per worker; the parent stops it),
  dying with its parent (Linux `PR_SET_PDEATHSIG`, else a watchdog thread), and sending an
  anticipated error to the parent as its one line (`user_message`) instead of a traceback;
- `Children`: leaving its block with an exception (an interrupt, an error) stops every child
  still running: SIGTERM, a bounded wait (`STOP_SECONDS`), then SIGKILL.

What an interrupted command leaves is what the next run recovers: the trials of stopped
workers are failed and retried, their MLflow runs closed or written again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from harness.core.errors import HarnessError, user_message

if TYPE_CHECKING:  # multiprocessing and ctypes are imported where a child is started: every
    # command's process imports this module (signals_handled), and `--help` stays fast
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

STOP_SECONDS = 5.0  # how long a stopped child may take to exit before it is killed
REPORT_CHARS = 8000  # a child's one-line error, at most (4 bytes a character: half a 64 KiB pipe)
_PR_SET_PDEATHSIG = 1


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) received: raised like KeyboardInterrupt, so cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


class ChildFailed(HarnessError):
    """A child process stopped on an anticipated error; the message is its one line."""


_LIVE: set[BaseProcess] = set()  # children of this process not yet joined
_state: dict[str, Any] = {"stopping": False, "command": None}


def command_pid() -> int:
    """The process of the command this process works for: its parent in a child started by
    `Children`, else itself."""
    return _state["command"] or os.getpid()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state["stopping"]:  # the second one: no more cleanup
        kill_children()
        os._exit(128 + signum)
    _state["stopping"] = True
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def signals_handled() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise in the main thread while the block runs (the first
    one; a second exits at once); the previous handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.getsignal(s) for s in wanted}
    _state["stopping"] = False
    for s in wanted:
        if old[s] != signal.SIG_IGN:  # `nohup` keeps SIGHUP ignored
            signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _state["stopping"] = False


def kill_children() -> None:
    """SIGKILL every child of this process still running (the second Ctrl-C)."""
    for p in list(_LIVE):
        with contextlib.suppress(Exception):
            if p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)


def exit_status(e: BaseException) -> int:
    """130 for Ctrl-C, 128 + the signal for a termination (143 for SIGTERM)."""
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs (a zombie, killed and not yet waited for
    by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# -- in the child ------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Make the kernel send SIGTERM when the parent dies (Linux); elsewhere, a thread
    checks once a second. Either way a child never runs on after its command."""
    armed = False
    with contextlib.suppress(Exception):
        import ctypes  # lazy: only a child process needs it

        armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    if os.getppid() != parent:  # the parent died before the kernel could be told
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _child_main(target: Callable[..., Any], args: Sequence[Any], report: Connection, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent)
    _state["command"] = parent
    try:
        target(*args)
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise  # a bug: multiprocessing prints its traceback, exit status 1
        with contextlib.suppress(Exception):
            # under a pipe's buffer: the parent reads reports after joining its children
            report.send(message[:REPORT_CHARS])
        sys.exit(2)


# -- in the parent ----------------------------------------------------------------------------------
class Children:
    """The child processes of one command step; see the module's docstring.

    `with Children() as kids: kids.start(...); kids.wait()`: leaving the block with an
    exception stops the children that still run."""

    def __init__(self) -> None:
        import multiprocessing  # lazy: 80 ms, only for commands that start children

        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[tuple[BaseProcess, Connection]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.stop()

    def start(self, target: Callable[..., Any], args: Sequence[Any] = (), name: str | None = None) -> BaseProcess:
        """Spawn `target(*args)` as a child that starts with SIGINT ignored (the disposition
        passes through exec; SIGINT is blocked meanwhile so the parent's Ctrl-C stays
        pending, not lost)."""
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_main, args=(target, tuple(args), send, os.getpid()),
                                name=name, daemon=False)
        main = threading.current_thread() is threading.main_thread()
        previous: Any = None
        try:
            if main:  # (both calls may run a pending handler: inside `try`, so the mask is undone)
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            proc.start()
            # known before a pending Ctrl-C can be raised below: an interrupt stops it too
            _LIVE.add(proc)
            self.procs.append((proc, recv))
        finally:
            if main:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            send.close()
        return proc

    def join(self, proc: BaseProcess, timeout: float | None = None) -> bool:
        """Wait for one child (at most `timeout` s); whether it has exited."""
        proc.join(timeout)
        if proc.exitcode is None:
            return False
        _LIVE.discard(proc)
        return True

    def wait(self) -> list[int]:
        """Wait for every child; their exit statuses. A child that stopped on an anticipated
        error raises its one line here (the first such line, once)."""
        for proc, _ in self.procs:
            self.join(proc)
        for _, recv in self.procs:
            message = None
            with contextlib.suppress(EOFError, OSError):
                if recv.poll():
                    message = recv.recv()
            recv.close()
            if message:
                raise ChildFailed(message)
        return [int(p.exitcode or 0) for p, _ in self.procs]

    def stop(self, seconds: float = STOP_SECONDS) -> None:
        """SIGTERM every child still running, wait up to `seconds`, SIGKILL the rest."""
        alive = [p for p, _ in self.procs if p.exitcode is None]
        for p in alive:
            with contextlib.suppress(Exception):
                p.terminate()
        deadline = time.monotonic() + seconds
        for p in alive:
            self.join(p, max(0.0, deadline - time.monotonic()))
        for p in alive:
            if p.exitcode is None:
                with contextlib.suppress(Exception):
                    p.kill()
                self.join(p, STOP_SECONDS)
