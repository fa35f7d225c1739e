"""Audit of issue #20's cases (interrupts, full disks, unreachable servers, hostile YAML,
concurrent runs) as a user meets them: each case runs the real `granalign` command line of
a source tree in a temp folder of its own, and the table says what it gave.

    python benchmarks/audit_robustness.py [--tree PATH] [--only NAME ...] [--list] [--json OUT]

`--tree` is the source tree to import (default: this checkout); run it on a checkout of the
branch point and on the branch to get a before/after table. Needs the demo cache (built on
first use into `--demo-cache`, default /tmp/granalign-audit-demo-cache), the real data
(`$GRANALIGN_DATA`) for the eval cases, and root for the full-disk and read-only cases
(tmpfs mounts; skipped otherwise). Verdicts:

- `clear`: the expected exit status, one `granalign` line naming what it should, no traceback;
- `correct`: the command did the right thing (exit 0 and the case's check holds);
- `unclear`: an error, but a traceback, several lines, or not naming what it should;
- `silent`: exit 0 but the case's check fails (something was not done, and nothing said so);
- `hang`: still running at the case's time bound (killed);
- `lost`: an interrupt case whose processes outlived the command, or whose rerun did not recover.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GRANALIGN_DATA") or REPO.parent / "shared" / "data")
# nine levels of aliases (a "billion laughs"): inside a value the config reads (`tags`)
LEVELS = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
FLOW_BOMB = "{" + ", ".join(LEVELS) + "}"  # one line: a mapping whose last key expands to 9**9 items
BOMB = "tags:\n" + "".join(f"  {line}\n" for line in LEVELS)  # a config's `tags`, one level a line


@dataclass
class Result:
    code: int | None
    out: str
    err: str
    seconds: float
    verdict: str = ""
    note: str = ""


@dataclass
class Case:
    name: str
    args: list[str] | Callable[[Path], list[str]]
    code: int = 2  # the status a right answer has
    names: tuple[str, ...] = ()  # what the error line must name
    forbid: tuple[str, ...] = ("Traceback",)
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, Result], str] | None = None  # '' when right, else what is wrong
    timeout: float = 60.0
    stdin: str | None = None
    stdout_file: Callable[[Path], Path] | None = None
    custom: Callable[[Path, Audit], Result] | None = None  # interrupt cases
    root: bool = False  # needs mounts
    group: str = "new"


class Audit:
    def __init__(self, tree: Path, demo_cache: Path, template: Path) -> None:
        self.tree = tree
        self.demo_cache = demo_cache
        self.template = template

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(self.tree), "PYTHONWARNINGS": "ignore",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "GRANALIGN_DATA": str(DATA)}
        env.pop("GRANALIGN_TEST_FAULT", None)
        return {**env, **(extra or {})}

    def cmd(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "harness.cli", *args]

    def stores(self, w: Path) -> list[str]:
        return ["--storage", f"sqlite:///{w}/optuna.db", "--tracking-uri", f"sqlite:///{w}/mlflow.db",
                "--cache", str(self.demo_cache)]

    def workdir(self, base: Path, name: str) -> Path:
        w = base / name.replace(" ", "_").replace("/", "_")
        w.mkdir(parents=True)
        shutil.copy(self.template, w / "mlflow.db")
        return w

    def run(self, case: Case, w: Path) -> Result:
        if case.setup is not None:
            case.setup(w)
        if case.custom is not None:
            return case.custom(w, self)
        args = case.args(w) if callable(case.args) else case.args
        args = [a.replace("{w}", str(w)).replace("{cache}", str(self.demo_cache)).replace("{repo}", str(REPO))
                .replace("{data}", str(DATA)) for a in args]
        t0 = time.monotonic()
        stdout: Any = subprocess.PIPE
        if case.stdout_file is not None:
            stdout = open(case.stdout_file(w), "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(self.cmd(args), cwd=w, env=self.env(case.env), stdout=stdout,
                                    stderr=subprocess.PIPE, stdin=subprocess.PIPE if case.stdin else None,
                                    start_new_session=True)
            try:
                out, err = proc.communicate(case.stdin.encode() if case.stdin else None, timeout=case.timeout)
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                code = None
        finally:
            if case.stdout_file is not None:
                stdout.close()
        return Result(code, (out or b"").decode(errors="replace"), err.decode(errors="replace"),
                      time.monotonic() - t0)


def judge(case: Case, r: Result, w: Path) -> None:
    if r.verdict:
        return
    lines = [x for x in r.err.splitlines() if x.startswith("granalign")]
    if r.code is None:
        r.verdict = "hang"
        return
    bad = [f for f in case.forbid if f in r.err or f in r.out]
    problem = case.check(w, r) if case.check is not None else ""
    if case.code == 0:
        if r.code != 0:
            r.verdict, r.note = "unclear", r.note or f"exit {r.code}"
        elif bad:
            r.verdict, r.note = "unclear", f"printed {bad}"
        elif problem:
            r.verdict, r.note = "silent", problem
        else:
            r.verdict = "correct"
        return
    if r.code == 0:
        r.verdict, r.note = "silent", problem or "exit 0"
    elif bad or not lines or r.code != case.code or not all(n in lines[-1] for n in case.names) or problem:
        missing = [n for n in case.names if not lines or n not in lines[-1]]
        r.verdict = "unclear"
        r.note = "; ".join(x for x in (f"printed {bad}" if bad else "", f"exit {r.code}" if r.code != case.code else "",
                                        f"line lacks {missing}" if missing else "", problem) if x)
    else:
        r.verdict = "clear"


# -- helpers for cases --------------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def demo_config(w: Path, extra: str) -> Path:
    return write(w / "cfg.yaml", f"base: {REPO / 'experiments' / 'demo.yaml'}\n{extra}")


def trial_states(storage: str) -> dict[str, int]:
    try:
        con = sqlite3.connect(storage.removeprefix("sqlite:///"), timeout=30)
        rows = con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall()
        con.close()
        return dict(rows)
    except sqlite3.Error:
        return {}


def mlflow_children(db: Path, experiment: str) -> list[tuple[str, dict[str, str]]]:
    """(status, tags) of every run with a parent, read with sqlite3 (no MLflow import)."""
    con = sqlite3.connect(db)
    try:
        runs = con.execute("SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON r.experiment_id = "
                           "e.experiment_id WHERE e.name = ? AND r.lifecycle_stage = 'active'", (experiment,)).fetchall()
        out = []
        for run_id, status in runs:
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
            out.append((status, tags))
        return out
    except sqlite3.Error:
        return []
    finally:
        con.close()


def finished_trials(w: Path) -> int:
    s = trial_states(f"sqlite:///{w}/optuna.db")
    return s.get("COMPLETE", 0) + s.get("PRUNED", 0)


def group_gone(pgid: int, seconds: float = 20.0) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


@contextlib.contextmanager
def mounted(path: Path, size: str = "6m") -> Any:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> None:
    for name, chunk in (("filler", 65536), ("filler2", 512)):
        with contextlib.suppress(OSError), open(folder / name, "wb") as f:
            while True:
                f.write(b"\0" * chunk)
                f.flush()


# -- interrupt cases ------------------------------------------------------------------------------------------
def interrupt(sig: str, workers: int, to_group: bool, twice: bool = False, kind: str = "sweep") -> Callable[..., Result]:
    """Start a sweep (or table) with slow trials, wait until 8 trials finished (rows: 2 running),
    signal it, measure exit and leftovers, rerun, compare Optuna and MLflow."""

    def go(w: Path, a: Audit) -> Result:
        if kind == "sweep":
            args = ["sweep", str(REPO / "experiments/sweeps/demo.yaml"), "--demo", *a.stores(w), "--n-trials", "400",
                    "--workers", str(workers)]
            fault = "sweep:trial|sleep=0.2"
            ready = lambda: finished_trials(w) >= 8  # noqa: E731
        else:
            args = ["table", "C2", "--demo", *a.stores(w), "--out", str(w), "--workers", str(workers)]
            fault = "table-row:start|sleep=30"
            ready = lambda: trial_states(f"sqlite:///{w}/optuna.db").get("RUNNING", 0) >= workers  # noqa: E731
        t0 = time.monotonic()
        log = open(w / "log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(a.cmd(args), cwd=w, env=a.env({"GRANALIGN_TEST_FAULT": fault}), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        note = []
        try:
            while not ready():
                if proc.poll() is not None or time.monotonic() - t0 > 240:
                    break
                time.sleep(0.3)
            signum = getattr(signal, sig)
            (os.killpg if to_group else os.kill)(proc.pid, signum)
            if twice:
                time.sleep(0.5)
                (os.killpg if to_group else os.kill)(proc.pid, signum)
            t1 = time.monotonic()
            try:
                code: int | None = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                code = None
            exit_s = time.monotonic() - t1
            gone = group_gone(proc.pid)
            if gone is None:
                ps = subprocess.run(["ps", "-o", "pid,ppid,cmd", "-g", str(proc.pid)], capture_output=True, text=True)
                note.append(f"{len(ps.stdout.splitlines()) - 1} processes left: {ps.stdout.splitlines()[1:3]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()
        text = (w / "log").read_text(errors="replace")
        tracebacks = text.count("Traceback")
        finished = finished_trials(w)
        runs_before = sum(1 for s, t in mlflow_children(w / "mlflow.db", f"{kind}-{'demo' if kind == 'sweep' else 'C2'}")
                          if s == "FINISHED" and t.get("granalign.kind") in ("trial", "row"))
        rerun_args = args[:-4] + (["--n-trials", "1"] if kind == "sweep" else [])
        again = subprocess.run(a.cmd(rerun_args), cwd=w, env=a.env(), capture_output=True, timeout=600)
        runs_after = sum(1 for s, t in mlflow_children(w / "mlflow.db", f"{kind}-{'demo' if kind == 'sweep' else 'C2'}")
                         if s == "FINISHED" and t.get("granalign.kind") in ("trial", "row"))
        finished_after = finished_trials(w)
        note.insert(0, f"exit after {exit_s:.1f} s; {tracebacks} tracebacks; "
                       f"finished {finished} / MLflow {runs_before}; rerun (exit {again.returncode}): "
                       f"finished {finished_after} / MLflow {runs_after}")
        r = Result(code, "", text, time.monotonic() - t0, note="; ".join(note))
        want = 128 + getattr(signal, sig)
        if code is None or gone is None:
            r.verdict = "hang" if code is None else "lost"
        elif kind == "sweep" and runs_after != finished_after:
            r.verdict = "lost"
        elif code != want or tracebacks or again.returncode != 0:
            r.verdict = "unclear"
        else:
            r.verdict = "clear"
        return r

    return go


def kill_main(w: Path, a: Audit) -> Result:
    """SIGKILL the main process of a 2-worker sweep: its workers and writer must die with it."""
    args = ["sweep", str(REPO / "experiments/sweeps/demo.yaml"), "--demo", *a.stores(w), "--n-trials", "400",
            "--workers", "2"]
    t0 = time.monotonic()
    proc = subprocess.Popen(a.cmd(args), cwd=w, env=a.env({"GRANALIGN_TEST_FAULT": "sweep:trial|sleep=0.2"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while finished_trials(w) < 6 and proc.poll() is None and time.monotonic() - t0 < 240:
            time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = finished_trials(w)
        time.sleep(5)
        after = finished_trials(w)
        gone = group_gone(proc.pid, 15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    r = Result(proc.returncode, "", "", time.monotonic() - t0,
               note=f"trials finished after the kill: {after - before} in 5 s; group gone: {gone is not None}")
    r.verdict = "clear" if gone is not None and after - before <= 2 else "lost"
    return r


def two_tables(w: Path, a: Audit) -> Result:
    args = ["table", "C2", "--demo", *a.stores(w), "--out", str(w / "first")]
    t0 = time.monotonic()
    proc = subprocess.Popen(a.cmd(args), cwd=w, env=a.env({"GRANALIGN_TEST_FAULT": "table-row:start#lam=0.2|sleep=25"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while proc.poll() is None and time.monotonic() - t0 < 240:
            con = sqlite3.connect(w / "optuna.db", timeout=30) if (w / "optuna.db").exists() else None
            running = []
            if con is not None:
                with contextlib.suppress(sqlite3.Error):
                    running = con.execute(
                        "SELECT p.param_value FROM trials t JOIN trial_params p ON p.trial_id = t.trial_id "
                        "WHERE t.state = 'RUNNING' AND p.param_name = 'row'").fetchall()
                con.close()
            if running and any(int(v) == 2 for (v,) in running):  # lam=0.2 is the third row
                break
            time.sleep(0.3)
        second = subprocess.run(a.cmd(["table", "C2", "--demo", *a.stores(w), "--out", str(w / "second")]), cwd=w,
                                env=a.env(), capture_output=True, text=True, timeout=300)
        proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    line = next((x for x in second.stdout.splitlines() if x.startswith("| lam=0.2")), "")
    cell = line.split("|")[2].strip() if line else "?"
    r = Result(second.returncode, second.stdout, second.stderr, time.monotonic() - t0,
               note=f"second process shows lam=0.2 as {cell[:60]!r}; wrote table: "
                    f"{any((w / 'second').rglob('tableC2*.md'))}")
    r.verdict = "correct" if "running elsewhere" in cell and not any((w / "second").rglob("tableC2*.md")) else "silent"
    return r


def full_disk(store: str) -> Callable[[Path, Audit], Result]:
    def go(w: Path, a: Audit) -> Result:
        with mounted(w / "small") as small:
            db = small / f"{store}.db"
            if store == "mlflow":
                shutil.copy(a.template, db)
            flag = "--storage" if store == "optuna" else "--tracking-uri"
            base = ["sweep", str(REPO / "experiments/sweeps/demo.yaml"), "--demo", "--cache", str(a.demo_cache),
                    "--storage", f"sqlite:///{w}/optuna.db", "--tracking-uri", f"sqlite:///{w}/mlflow.db",
                    flag, f"sqlite:///{db}"]
            subprocess.run(a.cmd([*base, "--n-trials", "1"]), cwd=w, env=a.env(), capture_output=True, timeout=300)
            fill(small)
            t0 = time.monotonic()
            p = subprocess.run(a.cmd([*base, "--n-trials", "30"]), cwd=w, env=a.env(), capture_output=True, text=True,
                               timeout=300)
            return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
    return go


def full_disk_cache(w: Path, a: Audit) -> Result:
    with mounted(w / "small") as small:
        data = fake_data_root(w, blanks=False, n_queries=40)
        p0 = subprocess.run(a.cmd(["cache", "import", "--what", "paraphrases", "--dataset", "qvhighlights:val", "--data-root",
                                   str(data), "--cache", str(small / "cache")]), cwd=w, env=a.env(), capture_output=True)
        fill(small)
        t0 = time.monotonic()
        p = subprocess.run(a.cmd(["cache", "import", "--what", "captions:minigptv2", "--dataset", "qvhighlights:val",
                                  "--data-root", str(data), "--cache", str(small / "cache")]), cwd=w, env=a.env(),
                           capture_output=True, text=True, timeout=300)
        r = Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
        if p0.returncode != 0:
            r.note = "setup import failed: " + p0.stderr.decode()[-200:]
        return r


def on_small(args: Callable[[Path, Path], list[str]], ro: bool = False, full: bool = True,
             prepare: Callable[[Path, Path, Audit], None] | None = None,
             stdout_on_disk: bool = False) -> Callable[[Path, Audit], Result]:
    def go(w: Path, a: Audit) -> Result:
        with mounted(w / "small") as small:
            if prepare is not None:
                prepare(w, small, a)
            if full:
                fill(small)
            if ro:
                subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
            t0 = time.monotonic()
            cmd = a.cmd([x.replace("{cache}", str(a.demo_cache)).replace("{repo}", str(REPO)).replace("{w}", str(w))
                         for x in args(w, small)])
            if stdout_on_disk:
                with open(small / "filler2", "ab") as out:
                    p = subprocess.run(cmd, cwd=w, env=a.env(), stdout=out, stderr=subprocess.PIPE, text=True,
                                       timeout=300)
                    return Result(p.returncode, "", p.stderr, time.monotonic() - t0)
            p = subprocess.run(cmd, cwd=w, env=a.env(), capture_output=True, text=True, timeout=300)
            return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
    return go


def fake_data_root(w: Path, blanks: bool = True, n_queries: int = 2, paraphrases: int = 5,
                   empty_paraphrase: bool = False) -> Path:
    """A data root with the first `n_queries` val annotations, their MiniGPT-v2 captions (the
    first video's with blank descriptions) and paraphrases."""
    root = w / "data"
    lines = (DATA / "qvhighlights/highlight_val_release.jsonl").read_text().splitlines()[:n_queries]
    write(root / "qvhighlights/highlight_val_release.jsonl", "\n".join(lines) + "\n")
    para = []
    for i, line in enumerate(lines):
        q = json.loads(line)
        src = DATA / "qvhighlights/captions/minigptv2/val" / f"{q['vid']}.jsonl"
        caps = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
        if blanks and i == 0:
            for j, b in zip(range(1, 7, 2), ["", "   ", "\u200b"], strict=False):
                caps[j]["description"] = b
        write(root / "qvhighlights/captions/minigptv2/val" / f"{q['vid']}.jsonl",
              "".join(json.dumps(c) + "\n" for c in caps))
        ps = [f"{q['query']} ({k})" for k in range(paraphrases)]
        if empty_paraphrase and i == 0:
            ps[1] = ""
        para.append(json.dumps({"qid": q["qid"], "query": q["query"], "rephrased_query": ps}))
    write(root / "qvhighlights/queries/baichuan2_paraphrases_val.jsonl", "\n".join(para) + "\n")
    return root


# -- the cases -----------------------------------------------------------------------------------------------
def sweep_args(*extra: str) -> list[str]:
    return ["sweep", "{repo}/experiments/sweeps/demo.yaml", "--demo", "--storage", "sqlite:///{w}/optuna.db",
            "--tracking-uri", "sqlite:///{w}/mlflow.db", "--cache", "{cache}", *extra]


def run_args(cfg: str, *extra: str) -> list[str]:
    return ["run", cfg, "--cache", "{cache}", *extra]


def check_tags(w: Path, r: Result) -> str:
    runs = mlflow_children(w / "mlflow.db", "sweep-demo")
    with_tag = sum(t.get("team") == "vision" for _, t in runs)
    return "" if runs and with_tag == len(runs) else f"{with_tag} of {len(runs)} runs carry the config's tags"


def check_out_link(w: Path, r: Result) -> str:
    link, target = w / "link", w / "first"
    problems = []
    if not link.is_symlink():
        problems.append("the symlink was replaced by a folder")
    if "lam: 0.5" not in (target / "config.yaml").read_text():
        problems.append("the target was not updated")
    stray = [p.name for p in w.iterdir() if p.name.startswith(".")]
    if stray:
        problems.append(f"stray {stray}")
    return "; ".join(problems)


def setup_out_link(w: Path) -> None:
    subprocess.run([sys.executable, "-m", "harness.cli", "run", str(REPO / "experiments/demo.yaml"), "--cache",
                    str(AUDIT.demo_cache), "--out", str(w / "first")], cwd=w, env=AUDIT.env(), capture_output=True)
    (w / "link").symlink_to(w / "first")


def setup_stale_temp(w: Path) -> None:
    old = w / "runs" / ".r.k2j3h4.tmp"
    old.mkdir(parents=True)
    write(old / "predictions.jsonl", "{}\n")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (w / "runs" / ".r.999999999-k2j3h4.tmp").mkdir()


def check_stale_temp(w: Path, r: Result) -> str:
    left = sorted(p.name for p in (w / "runs").iterdir() if p.name != "r")
    return f"left {left}" if left else ""


def check_blank(w: Path, r: Result) -> str:
    return "" if "were empty" in r.out else "no count or note of the blank descriptions"


def check_best_written(w: Path, r: Result) -> str:
    return "" if (w / "best.yaml").exists() else "the --best-config file was not written"


def check_not_applied(w: Path, r: Result) -> str:
    return "" if "not applied" in r.err.lower() else "nothing says lam=0.55 was not applied"


def check_mine_removed(w: Path, r: Result) -> str:
    return "" if not list(w.rglob(".*.tmp")) else f"left {[p.name for p in w.rglob('.*.tmp')]}"


def setup_timeout_done(w: Path) -> None:
    subprocess.run([sys.executable, "-m", "harness.cli", *[x.replace("{w}", str(w)).replace(
        "{cache}", str(AUDIT.demo_cache)).replace("{repo}", str(REPO)) for x in sweep_args("--n-trials", "1")]],
        cwd=w, env=AUDIT.env(), capture_output=True)


def mkfifo_pred(w: Path) -> None:
    os.mkfifo(w / "fifo")
    ref = DATA / "qvhighlights/eval_reference/sample_val_preds.jsonl"
    subprocess.Popen(["sh", "-c", f"cat {ref} > {w / 'fifo'}"])


def nan_space(w: Path) -> None:
    write(w / "nan.yaml", f"name: nan\nbase: {REPO / 'experiments/demo.yaml'}\nobjectives:\n"
          "  - {metric: MR-short-mAP, direction: maximize}\nspace:\n  lam: {type: float, low: 0.0, high: 0.6, step: 0.1}\n")


def bomb_space(w: Path) -> None:
    write(w / "s.yaml", f"name: s\nbase: {REPO / 'experiments/demo.yaml'}\nobjectives: [{{metric: MR-full-mAP}}]\n"
          "space: {tags: {type: categorical, choices: [" + FLOW_BOMB + "]}}\n")


def deleted_cwd(args: list[str]) -> Callable[[Path, Audit], Result]:
    def go(w: Path, a: Audit) -> Result:
        gone = w / "gone"
        gone.mkdir()
        cmd = " ".join(f"'{x}'" for x in a.cmd([x.replace("{cache}", str(a.demo_cache)).replace("{repo}", str(REPO))
                                                 for x in args]))
        t0 = time.monotonic()
        p = subprocess.run(["sh", "-c", f"cd {gone} && rmdir {gone} && exec {cmd}"], env=a.env(), capture_output=True,
                           text=True, timeout=120)
        return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
    return go


def cases() -> list[Case]:
    port = closed_port()
    demo = "{repo}/experiments/demo.yaml"
    issue = "issue"
    return [
        # ---- the issue's cases
        Case("Ctrl-C during sweep (1 worker)", [], custom=interrupt("SIGINT", 1, True), group=issue),
        Case("Ctrl-C during sweep --workers 2", [], custom=interrupt("SIGINT", 2, True), group=issue),
        Case("SIGTERM to main of sweep --workers 2", [], custom=interrupt("SIGTERM", 2, False), group=issue),
        Case("run killed while writing: stale temps", run_args(demo, "--out", "{w}/runs/r"), code=0,
             setup=setup_stale_temp, check=check_stale_temp, group=issue),
        Case("alias bomb in run config tags", lambda w: run_args(str(demo_config(w, BOMB))),
             names=("cfg.yaml",), timeout=60, group=issue),
        Case("alias bomb in a sweep's categorical choice", lambda w: (bomb_space(w), sweep_args())[1][:1] + [str(w / "s.yaml")]
             + sweep_args()[2:], names=("s.yaml",), timeout=60, group=issue),
        Case("NaN objective on every trial", lambda w: (nan_space(w), ["sweep", str(w / "nan.yaml")])[1]
             + sweep_args("--set", "limit=3", "--n-trials", "50")[2:], names=("nan",), timeout=90, group=issue),
        Case("MLflow server not listening", ["table", "3", "--demo", "--cache", "{cache}", "--storage",
                                             "sqlite:///{w}/optuna.db", "--out", "{w}"],
             env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "GRANALIGN_RETRY_SECONDS": "10"},
             names=(f"127.0.0.1:{port}",), timeout=90, group=issue,
             check=lambda w, r: "" if "retrying" in r.err else "nothing said it retries"),
        Case("sweep --set tags={...}", sweep_args("--n-trials", "2", "--set", "tags={team: vision}"), code=0,
             check=check_tags, group=issue),
        Case("sweep --set lam=0.55 (lam in the space)", sweep_args("--n-trials", "2", "--set", "lam=0.55"), code=0,
             check=check_not_applied, group=issue),
        Case("two tables at once", [], custom=two_tables, group=issue),
        Case("--out is a symlink to an earlier run", run_args(demo, "--set", "lam=0.5", "--out", "{w}/link"), code=0,
             setup=setup_out_link, check=check_out_link, group=issue),
        Case("blank caption descriptions", lambda w: ["cache", "import", "--what", "captions:minigptv2", "--dataset",
                                                      "qvhighlights:val", "--data-root", str(fake_data_root(w)),
                                                      "--cache", str(w / "cache")], code=0, check=check_blank,
             group=issue),
        Case("MLflow URL with a password", ["table", "3", "--demo", "--cache", "{cache}", "--storage",
                                            "sqlite:///{w}/optuna.db"],
             env={"MLFLOW_TRACKING_URI": f"http://bob:PASSWORD@127.0.0.1:{port}", "GRANALIGN_RETRY_SECONDS": "0",
                  "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},  # MLflow's own retries off: the message, at once
             names=("bob:***@",), forbid=("Traceback", "PASSWORD"), timeout=90, group=issue),
        Case("README PostgreSQL URL form", sweep_args("--storage", f"postgresql://user@127.0.0.1:{port}/db"),
             names=(f"postgresql://user@127.0.0.1:{port}/db", "does not answer"), forbid=("Traceback", "No module"),
             env={"GRANALIGN_RETRY_SECONDS": "0"}, group=issue),
        Case("full disk under the Optuna storage", [], custom=full_disk("optuna"), names=("optuna.db", "disk is full"),
             root=True, group=issue, forbid=("Traceback", "invalid data in the commit")),
        Case("full disk under the MLflow store", [], custom=full_disk("mlflow"), names=("mlflow.db", "disk is full"),
             root=True, group=issue, forbid=("Traceback", "database or disk is full\n")),
        Case("full disk under the cache", [], custom=full_disk_cache, names=("cache.sqlite", "disk is full"),
             root=True, group=issue, forbid=("Traceback", "damaged")),
        Case("full disk under --out", [], custom=on_small(lambda w, s: run_args(demo, "--out", str(s / "r"))),
             names=("small/r", "No space left"), root=True, group=issue, forbid=("Traceback", ".tmp")),
        Case("Ctrl-C during table --workers 2", [], custom=interrupt("SIGINT", 2, True, kind="table"), group=issue),
        Case("eval --ci --resamples 100000000", ["eval", "--dataset", "qvhighlights:val", "--pred",
                                                  "{data}/qvhighlights/eval_reference/sample_val_preds.jsonl", "--ci",
                                                  "--resamples", "100000000"], names=("--resamples",), timeout=120,
             group=issue),
        Case("--workers 1000", sweep_args("--n-trials", "1", "--workers", "1000"), names=("--workers",),
             setup=setup_timeout_done, group=issue),
        Case("--n-trials 1000000 --timeout 3", sweep_args("--n-trials", "1000000", "--timeout", "3"), code=0,
             timeout=120, group=issue),
        Case("10 MB name", lambda w: run_args(str(demo_config(w, f"name: '{'x' * 10_000_000}'\n"))),
             names=("cfg.yaml", "name"), timeout=120, group=issue,
             check=lambda w, r: "" if len(r.err) < 5000 else f"{len(r.err)} bytes of stderr"),
        Case("alias bomb in pairing", lambda w: run_args(str(demo_config(w, BOMB + "pairing: *i\n"))),
             names=("cfg.yaml",), timeout=60, group=issue,
             check=lambda w, r: "" if len(r.err) < 5000 else f"{len(r.err)} bytes of stderr"),
        Case("--out is a dangling symlink", run_args(demo, "--out", "{w}/dangling"), names=("dangling",),
             setup=lambda w: (w / "dangling").symlink_to(w / "nowhere"), forbid=("Traceback", ".tmp"), group=issue),
        Case("--best-config is a folder", sweep_args("--n-trials", "3", "--best-config", "{w}"),
             names=("is a folder",), group=issue,
             check=lambda w, r: "" if r.seconds < 15 and not finished_trials(w) else
             f"failed after {r.seconds:.0f} s, {finished_trials(w)} trials run"),
        Case("stdout on a full device with --best-config", [], group=issue, root=True,
             custom=on_small(lambda w, s: [*sweep_args("--n-trials", "2", "--best-config", str(w / "best.yaml"))],
                             stdout_on_disk=True), names=("standard output",), check=check_best_written),
        Case("deleted current folder", [], custom=deleted_cwd(["table", "3", "--demo", "--cache", "{cache}"]),
             names=("current folder",), group=issue),
        Case("paraphrase row with 3 of 5", lambda w: ["cache", "import", "--what", "paraphrases", "--dataset",
                                                      "qvhighlights:val", "--data-root",
                                                      str(fake_data_root(w, paraphrases=3)), "--cache", str(w / "c")],
             names=("3 paraphrases",), group=issue),
        Case("paraphrase row with an empty one", lambda w: ["cache", "import", "--what", "paraphrases", "--dataset",
                                                            "qvhighlights:val", "--data-root",
                                                            str(fake_data_root(w, empty_paraphrase=True)),
                                                            "--cache", str(w / "c")],
             names=("2 of 5 is empty",), group=issue),
        Case("gzip prediction file", lambda w: ["eval", "--dataset", "qvhighlights:val", "--pred",
                                                str(write(w / "p.jsonl.gz", gzip.compress(b'{"qid": 1}\n')))],
             names=("gzip",), group=issue),
        Case("--pred /dev/stdin", ["eval", "--dataset", "qvhighlights:val", "--pred", "/dev/stdin"], code=0,
             stdin=(DATA / "qvhighlights/eval_reference/sample_val_preds.jsonl").read_text(), group=issue),
        # ---- further cases
        Case("SIGHUP to a sweep", [], custom=interrupt("SIGHUP", 2, False)),
        Case("Ctrl-C twice during a sweep", [], custom=interrupt("SIGINT", 2, True, twice=True)),
        Case("SIGINT to main only of table --workers 2", [], custom=interrupt("SIGINT", 2, False, kind="table")),
        Case("SIGKILL to main of sweep --workers 2", [], custom=kill_main),
        Case("recursive alias in a run config", lambda w: run_args(str(demo_config(w, "tags: &t {a: *t}\n"))),
             names=("cfg.yaml",), timeout=60),
        Case("alias bomb in --set", run_args(demo, "--set", "tags=" + FLOW_BOMB), names=("override",), timeout=60),
        Case("alias bomb in table --set", ["table", "3", "--demo", "--cache", "{cache}", "--set", "tags=" + FLOW_BOMB],
             names=("override",), timeout=60),
        Case("alias bomb in a sweep's overrides", lambda w: ["sweep", str(write(w / "s.yaml", yaml_sweep(
            "overrides: {tags: " + FLOW_BOMB + "}")))] + sweep_args()[2:], names=("s.yaml",), timeout=60),
        Case("alias bomb in a run config's name", lambda w: run_args(str(demo_config(w, BOMB + "name: *i\n"))),
             names=("cfg.yaml",), timeout=60),
        Case("a small alias still loads", run_args("{w}/ok.yaml", "--out", "{w}/r"), code=0,
             setup=lambda w: write(w / "ok.yaml", f"base: {REPO / 'experiments/demo.yaml'}\n"
                                                  "name: &n aliased\ntags: {name: *n}\n")),
        Case("zip file as a run config", lambda w: run_args(str(write(w / "c.yaml", b"PK\x03\x04\x14\x00\x00\x00\xff"))),
             names=("c.yaml", "zip")),
        Case("SQLite database as --pred", lambda w: ["eval", "--dataset", "qvhighlights:val", "--pred",
                                                     str(write(w / "p.jsonl", b"SQLite format 3\x00\xff\xfe"))],
             names=("p.jsonl", "SQLite")),
        Case("xz file as --pred", lambda w: ["eval", "--dataset", "qvhighlights:val", "--pred",
                                             str(write(w / "p.jsonl", b"\xfd7zXZ\x00\x00\xff"))], names=("p.jsonl", "xz")),
        Case("gzip caption file", lambda w: (lambda root: (
            write(next((root / "qvhighlights/captions/minigptv2/val").glob("*.jsonl")),
                  gzip.compress(b'{"moment": 0, "description": "a"}\n')),
            ["cache", "import", "--what", "captions:minigptv2", "--dataset", "qvhighlights:val", "--data-root", str(root),
             "--cache", str(w / "c")])[1])(fake_data_root(w)), names=("gzip",)),
        Case("--pred from a FIFO", ["eval", "--dataset", "qvhighlights:val", "--pred", "{w}/fifo"], code=0,
             setup=mkfifo_pred),
        Case("--pred a folder without predictions", ["eval", "--dataset", "qvhighlights:val", "--pred", "{w}"],
             names=("predictions",)),
        Case("--out is a symlink to a file", run_args(demo, "--out", "{w}/tofile"), names=("tofile",),
             setup=lambda w: (write(w / "f.txt", "x"), (w / "tofile").symlink_to(w / "f.txt"))),
        Case("--out is a chain of symlinks", run_args(demo, "--out", "{w}/l2"), code=0,
             setup=lambda w: ((w / "target").mkdir(), (w / "l1").symlink_to(w / "target"),
                              (w / "l2").symlink_to(w / "l1")),
             check=lambda w, r: "" if (w / "l2").is_symlink() and (w / "target/metrics.json").exists() else
             "the link chain was replaced"),
        Case("--best-config is a symlink", sweep_args("--n-trials", "2", "--best-config", "{w}/best-link"), code=0,
             setup=lambda w: (w / "best-link").symlink_to(w / "best.yaml"),
             check=lambda w, r: "" if (w / "best-link").is_symlink() and (w / "best.yaml").exists() else
             "the link was replaced"),
        Case("--best-config in a missing folder", sweep_args("--n-trials", "3", "--best-config", "{w}/no/best.yaml"),
             names=("best.yaml",),
             check=lambda w, r: "" if not finished_trials(w) else f"{finished_trials(w)} trials ran first"),
        Case("mysql:// without its driver", sweep_args("--storage", "mysql://u@127.0.0.1/db"), names=("mysql",)),
        Case("unknown SQLAlchemy driver", sweep_args("--storage", "mysql+nosuchdriver://u@127.0.0.1/db"),
             names=("mysql",)),
        Case("psycopg2 URL with password, server down",
             sweep_args("--storage", f"postgresql+psycopg2://bob:PASSWORD@127.0.0.1:{port}/db"),
             names=("bob:***@",), forbid=("Traceback", "PASSWORD"), env={"GRANALIGN_RETRY_SECONDS": "0"}),
        Case("?password= in a storage URL, server down",
             sweep_args("--storage", f"postgresql://bob@127.0.0.1:{port}/db?password=SECRET"),
             names=("password=***",), forbid=("Traceback", "SECRET"), env={"GRANALIGN_RETRY_SECONDS": "0"}),
        Case("PostgreSQL server down, retried visibly",
             sweep_args("--storage", f"postgresql://bob@127.0.0.1:{port}/db"),
             names=("does not answer",), env={"GRANALIGN_RETRY_SECONDS": "4"}, timeout=60,
             check=lambda w, r: "" if "retrying" in r.err else "nothing said it retries"),
        Case("table --from-mlflow, server down", ["table", "3", "--demo", "--from-mlflow"],
             env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "GRANALIGN_RETRY_SECONDS": "3"},
             names=(f"127.0.0.1:{port}",), timeout=60),
        Case("unroutable MLflow host", ["table", "3", "--demo", "--cache", "{cache}", "--storage",
                                        "sqlite:///{w}/optuna.db"],
             env={"MLFLOW_TRACKING_URI": "http://10.255.255.1:5000", "GRANALIGN_RETRY_SECONDS": "5",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}, names=("10.255.255.1",), timeout=120),
        Case("GRANALIGN_RETRY_SECONDS=abc", ["table", "3", "--demo", "--cache", "{cache}", "--storage",
                                             "sqlite:///{w}/optuna.db"],
             env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "GRANALIGN_RETRY_SECONDS": "abc"},
             names=("GRANALIGN_RETRY_SECONDS",), timeout=60),
        Case("--timeout 0", sweep_args("--timeout", "0"), names=("--timeout",)),
        Case("--timeout nan", sweep_args("--timeout", "nan"), names=("--timeout",)),
        Case("--timeout -5", sweep_args("--timeout", "-5"), names=("--timeout",)),
        Case("--workers 33", sweep_args("--workers", "33"), names=("--workers",), setup=setup_timeout_done),
        Case("--workers 0", sweep_args("--workers", "0"), names=("--workers",)),
        Case("compare --resamples 20001", ["compare", "--dataset", "qvhighlights:val",
                                           "{data}/qvhighlights/eval_reference/sample_val_preds.jsonl",
                                           "{data}/qvhighlights/eval_reference/sample_val_preds.jsonl",
                                           "--resamples", "20001"], names=("--resamples",), timeout=120),
        Case("every trial raises, --workers 2", sweep_args("--n-trials", "50", "--workers", "2"),
             env={"GRANALIGN_TEST_FAULT": "sweep:trial"}, names=("failed",), timeout=120),
        Case("every row raises, --workers 2", ["table", "C2", "--demo", "--cache", "{cache}", "--storage",
                                               "sqlite:///{w}/optuna.db", "--tracking-uri", "sqlite:///{w}/mlflow.db",
                                               "--out", "{w}", "--workers", "2"],
             env={"GRANALIGN_TEST_FAULT": "table-row:start"}, code=0, timeout=180,
             check=lambda w, r: "" if r.out.count("failed: InjectedFault") >= 5 else "rows not shown as failed"),
        Case("NaN objective with --workers 2", lambda w: (nan_space(w), ["sweep", str(w / "nan.yaml")])[1]
             + sweep_args("--set", "limit=3", "--n-trials", "50", "--workers", "2")[2:], names=("nan",), timeout=120),
        Case("1 MB --set name", run_args(demo, "--set", "name=" + "y" * 1_000_000), names=("name",),
             check=lambda w, r: "" if len(r.err) < 5000 else f"{len(r.err)} bytes of stderr"),
        Case("run config nested 100000 deep", lambda w: run_args(str(write(w / "deep.yaml", "a: " + "[" * 100000))),
             names=("deep.yaml",)),
        Case("read-only file system under the Optuna storage", [], root=True, names=("optuna.db", "read-only"),
             custom=on_small(lambda w, s: sweep_args("--n-trials", "5", "--storage", f"sqlite:///{s}/optuna.db"),
                             ro=True, full=False, prepare=lambda w, s, a: subprocess.run(
                                 a.cmd([x.replace("{w}", str(w)).replace("{cache}", str(a.demo_cache))
                                        .replace("{repo}", str(REPO)) for x in
                                        sweep_args("--n-trials", "1", "--storage", f"sqlite:///{s}/optuna.db")]),
                                 cwd=w, env=a.env(), capture_output=True))),
        Case("read-only file system under --out", [], root=True, names=("small", "Read-only"),
             custom=on_small(lambda w, s: run_args(str(REPO / "experiments/demo.yaml"), "--out", str(s / "r")),
                             ro=True, full=False)),
        Case("read-only file system under the cache", [], root=True, names=("small",),
             custom=on_small(lambda w, s: ["cache", "import", "--what", "paraphrases", "--dataset", "qvhighlights:val",
                                           "--data-root", str(fake_data_root(w)), "--cache", str(s / "c")],
                             ro=True, full=False)),
        Case("full disk under --best-config", [], root=True, names=("best.yaml", "No space left"),
             custom=on_small(lambda w, s: sweep_args("--n-trials", "2", "--best-config", str(s / "best.yaml")))),
        Case("full disk under --out of a table", [], root=True, names=("small",),
             custom=on_small(lambda w, s: ["table", "C2", "--demo", "--cache", "{cache}", "--storage",
                                           f"sqlite:///{w}/optuna.db", "--tracking-uri", f"sqlite:///{w}/mlflow.db",
                                           "--out", str(s / "out")])),
        Case("deleted current folder (run)", [], custom=deleted_cwd(["run", str(REPO / "experiments/demo.yaml"),
                                                                      "--cache", "{cache}"]),
             names=("current folder",)),
        Case("--tracking-uri is a folder", ["table", "3", "--demo", "--cache", "{cache}", "--tracking-uri",
                                            "sqlite:///{w}"], names=("{w}",)),
        Case("caption file of only zero-width spaces", lambda w: (lambda root: (
            write(next((root / "qvhighlights/captions/minigptv2/val").glob("*.jsonl")),
                  '{"moment": 0, "description": "\u200b"}\n'),
            ["cache", "import", "--what", "captions:minigptv2", "--dataset", "qvhighlights:val", "--data-root", str(root),
             "--cache", str(w / "c")])[1])(fake_data_root(w)), names=("empty",)),
        Case("a folder named {...} in the storage path", lambda w: sweep_args("--n-trials", "1", "--storage",
                                                                             f"sqlite:///{w}/{{...}}/optuna.db"),
             setup=lambda w: (w / "{...}").mkdir(), code=0),
        Case("sweep --timeout with 2 workers", sweep_args("--n-trials", "1000000", "--timeout", "5", "--workers", "2"),
             code=0, timeout=120),
    ]


def yaml_sweep(extra: str) -> str:
    return (f"name: s\nbase: {REPO / 'experiments/demo.yaml'}\nobjectives: [{{metric: MR-full-mAP}}]\n"
            f"space: {{lam: {{type: float, low: 0.0, high: 0.6}}}}\n{extra}\n")


AUDIT: Audit


def main() -> int:
    global AUDIT
    # the cases' commands get Ctrl-C as a terminal's foreground job does (a shell that runs
    # this in the background ignores SIGINT, and children inherit that through exec)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # (nohup): a terminal's hang-up reaches them
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(REPO), help="source tree to run (default: this checkout)")
    p.add_argument("--demo-cache", default="/tmp/granalign-audit-demo-cache")
    p.add_argument("--only", nargs="*", help="case names containing any of these")
    p.add_argument("--group", choices=("issue", "new"), default=None)
    p.add_argument("--list", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    all_cases = cases()
    chosen = [c for c in all_cases if (not args.only or any(o in c.name for o in args.only))
              and (args.group is None or c.group == args.group)]
    if args.list:
        for c in chosen:
            print(f"{c.group:5}  {c.name}")
        return 0
    tree = Path(args.tree).resolve()
    demo_cache = Path(args.demo_cache)
    subprocess.run([sys.executable, "-c", "import sys; from harness.cache.demo import ensure_demo_cache; "
                    "ensure_demo_cache(sys.argv[1])", str(demo_cache)], env={**os.environ, "PYTHONPATH": str(tree)},
                   check=True)
    base = Path(tempfile.mkdtemp(prefix="granalign-audit-"))
    template = base / "mlflow-template.db"
    subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                    "MlflowClient('sqlite:///' + sys.argv[1]).search_experiments()", str(template)],
                   env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, check=True, capture_output=True)
    AUDIT = Audit(tree, demo_cache, template)
    root = os.geteuid() == 0
    results = []
    print(f"tree {tree}; {len(chosen)} cases", flush=True)
    for c in chosen:
        w = AUDIT.workdir(base, c.name)
        if c.root and not root:
            r = Result(None, "", "", 0.0, verdict="skipped", note="needs root")
        else:
            try:
                r = AUDIT.run(c, w)
            except Exception as e:  # the driver's own failure, reported as such
                r = Result(None, "", "", 0.0, verdict="driver error", note=f"{type(e).__name__}: {e}"[:200])
            judge(c, r, w)
        line = next((x for x in reversed(r.err.splitlines()) if x.startswith("granalign")), "")
        if not line and r.err.strip():
            line = r.err.strip().splitlines()[-1]
        results.append({"case": c.name, "group": c.group, "exit": r.code, "seconds": round(r.seconds, 1),
                        "verdict": r.verdict, "note": r.note, "line": line[:300], "stderr_bytes": len(r.err)})
        print(f"{r.verdict:8} {'-' if r.code is None else r.code:>4} {r.seconds:6.1f}s  {c.name}: "
              f"{(r.note + ' | ' if r.note else '')}{line[:160]}", flush=True)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print("summary:", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
