"""Nothing hangs, nothing leaks, nothing silent (issue #20): interrupts, full disks,
unreachable servers, hostile YAML and concurrent runs, each case as a user meets it.

Interrupt cases run the real command line as a process group (`start_new_session`), wait
until trials run (by polling the Optuna storage), send SIGINT to the whole group as a
terminal does (or SIGTERM to the main process alone, as a service manager does), and assert
the exit status, that no process of the group is left, and that a rerun recovers the same
result (as many MLflow runs as finished trials). Hang cases assert a time bound. Full-disk
cases put a store on a small tmpfs (the tests run as root in CI; elsewhere they are skipped).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.core.errors import redact, shorten, store_failure, user_message
from harness.core.faults import FAULT_ENV
from tests.conftest import Workspace

REPO = Path(__file__).resolve().parents[1]
DEMO_SWEEP = REPO / "experiments" / "sweeps" / "demo.yaml"
DEMO_CONFIG = REPO / "experiments" / "demo.yaml"
# nine levels of aliases (a "billion laughs"): inside a value the config reads (`tags`)
LEVELS = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
FLOW_BOMB = "{" + ", ".join(LEVELS) + "}"  # one line: a mapping whose last key expands to 9**9 items
BOMB = "tags:\n" + "".join(f"  {line}\n" for line in LEVELS)  # a config's `tags`, one level a line


# -- helpers -------------------------------------------------------------------------------------
def stores(root: Path, demo_cache: Path) -> list[str]:
    return ["--storage", f"sqlite:///{root}/optuna.db", "--tracking-uri", f"sqlite:///{root}/mlflow.db",
            "--cache", str(demo_cache)]


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def trial_states(storage: str) -> Counter[str]:
    import optuna

    try:
        summaries = optuna.get_all_study_summaries(storage)
    except Exception:  # not created yet
        return Counter()
    out: Counter[str] = Counter()
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        out.update(t.state.name for t in study.get_trials(deepcopy=False))
    return out


def mlflow_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=5000)


@contextlib.contextmanager
def process_group(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The command as a new process group; whatever happens, none of it outlives the test."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rerun_writes_every_run(cmd: list[str], storage: str, uri: str) -> Counter[str]:
    """Rerun the sweep `cmd` (without `--n-trials`) for at most one more trial: it reaps what
    an interruption left and writes the MLflow run of every finished trial, once. The trial
    states after it."""
    again = subprocess.run([*cmd, "--n-trials", "1"], cwd=REPO, env=cli_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    states = trial_states(storage)
    assert not states["RUNNING"], states
    trials = [r for r in mlflow_runs(uri, "sweep-demo") if r.data.tags.get("granalign.kind") == "trial"]
    by_trial = Counter(r.data.tags["trial"] for r in trials if r.info.status == "FINISHED")
    assert sum(by_trial.values()) == states["COMPLETE"] + states["PRUNED"], (by_trial, states)
    assert max(by_trial.values(), default=1) == 1 and not [r for r in trials if r.info.status == "RUNNING"]
    return states


def wait_until(what: str, condition: Any, seconds: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(0.3)
    pytest.fail(f"not within {seconds} s: {what}:\n{log.read_text()}")


def group_gone(pgid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


# -- Ctrl-C and SIGTERM during a sweep ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("how", "workers"), [("SIGINT to the group", 1), ("SIGINT to the group", 2),
                                              ("SIGTERM to the main process", 2)])
def test_an_interrupted_sweep_stops_every_process_and_a_rerun_backfills_its_runs(
        tmp_path: Path, demo_cache: Path, how: str, workers: int) -> None:
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo", *stores(tmp_path, demo_cache),
           "--n-trials", "400", "--workers", str(workers)]
    log = tmp_path / "sweep.log"
    with process_group(cmd, cli_env(**{FAULT_ENV: "sweep:trial|sleep=0.2"}), log) as proc:
        wait_until("8 finished trials", lambda: trial_states(storage)["COMPLETE"] + trial_states(storage)["PRUNED"] >= 8,
                   180, proc, log)
        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert group_gone(proc.pid), f"processes of the sweep outlived it:\n{log.read_text()}"
    text = log.read_text()
    assert code == (130 if how.startswith("SIGINT") else 143), text
    assert "Traceback" not in text, text
    assert text.strip().splitlines()[-1].startswith("granalign: "), text
    assert sum(line.startswith("granalign: ") for line in text.splitlines()) == 1, text
    first = trial_states(storage)
    # the rerun reaps what the interrupt left and writes the runs the writer did not reach
    states = rerun_writes_every_run(cmd[:-4], storage, uri)
    assert states["COMPLETE"] + states["PRUNED"] == first["COMPLETE"] + first["PRUNED"]


def test_a_backfilled_run_is_the_run_the_trial_would_have_written(
        tmp_path: Path, demo_cache: Path, mlflow_db_template: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The runs a rerun writes for finished trials carry the same params, metrics and tags
    (but `granalign.backfilled`) as the ones the sweep wrote itself."""
    from harness.cli import main

    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    args = ["sweep", str(DEMO_SWEEP), "--demo", *stores(tmp_path, demo_cache), "--n-trials", "4",
            "--set", "tags={team: vision}"]
    assert main(args) == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    written = {r.data.tags["trial"]: r for r in mlflow_runs(uri, "sweep-demo") if "trial" in r.data.tags}
    from mlflow.tracking import MlflowClient

    for r in written.values():  # as if the writer had never reached them
        MlflowClient(uri).delete_run(r.info.run_id)
    con = sqlite3.connect(tmp_path / "mlflow.db")
    con.execute("DELETE FROM runs WHERE lifecycle_stage = 'deleted'")
    con.commit()
    con.close()
    assert main(args) == 0
    again = {r.data.tags["trial"]: r for r in mlflow_runs(uri, "sweep-demo") if "trial" in r.data.tags}
    assert sorted(again) == sorted(written)
    for n, r in again.items():
        old = written[n]
        assert r.data.tags.pop("granalign.backfilled") == "true"
        assert r.data.params == old.data.params
        assert r.data.metrics == pytest.approx(old.data.metrics)
        assert r.info.status == old.info.status
        keep = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.") or k == "mlflow.parentRunId"}
        assert {k: r.data.tags.get(k) for k in keep} == keep
        assert r.data.tags["team"] == "vision"


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> None:
    """The first Ctrl-C gives the MLflow writer time to write what is queued (here a slow
    writer: 3 s a run); a second one does not wait for it. A rerun writes what it left."""
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo", *stores(tmp_path, demo_cache),
           "--n-trials", "400"]
    log = tmp_path / "sweep.log"
    with process_group(cmd, cli_env(**{FAULT_ENV: "mlflow-writer:run|sleep=3"}), log) as proc:
        wait_until("6 finished trials", lambda: trial_states(storage)["COMPLETE"] + trial_states(storage)["PRUNED"] >= 6,
                   180, proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, "the writer had runs to write: the first Ctrl-C waits for it"
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
        assert time.monotonic() - t0 < 3, log.read_text()
        assert group_gone(proc.pid), log.read_text()
    assert code == 130 and "Traceback" not in log.read_text(), log.read_text()
    rerun_writes_every_run(cmd[:-2], storage, f"sqlite:///{tmp_path}/mlflow.db")


@pytest.mark.slow
def test_a_dead_mlflow_writer_does_not_hang_two_workers(tmp_path: Path, demo_cache: Path,
                                                        mlflow_db_template: Path) -> None:
    """The writer killed at its first run while two workers keep sending theirs: the pipe
    fills, and a worker whose queue waited for its reader at exit would never end. The
    command ends with one line; a rerun writes every finished trial's run."""
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo", *stores(tmp_path, demo_cache),
           "--n-trials", "150", "--workers", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=cli_env(**{FAULT_ENV: "mlflow-writer:run@1|kill"}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "MLflow writer" in done.stderr.strip().splitlines()[-1], done.stderr
    states = rerun_writes_every_run(cmd[:-4], storage, f"sqlite:///{tmp_path}/mlflow.db")
    assert states["COMPLETE"] + states["PRUNED"] >= 150


@pytest.mark.slow
def test_workers_that_end_ahead_of_a_slow_writer_hand_it_every_run(tmp_path: Path, demo_cache: Path,
                                                                   mlflow_db_template: Path) -> None:
    """Two workers finish their trials while the MLflow writer is still far behind: each
    worker hands over every run it queued before it exits (a worker that exited with its
    queue's feeder mid-message left the writer waiting forever on half a run, or the pipe's
    lock held). The sweep ends, and every run is the writer's own, none backfilled."""
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo", *stores(tmp_path, demo_cache),
           "--n-trials", "60", "--workers", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=cli_env(**{FAULT_ENV: "mlflow-writer:run|sleep=0.15"}),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    runs = [r for r in mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", "sweep-demo")
            if r.data.tags.get("granalign.kind") == "trial"]
    assert len(runs) >= 60 and all(r.info.status == "FINISHED" for r in runs)
    assert not [r for r in runs if r.data.tags.get("granalign.backfilled")]


# -- Ctrl-C during a table with workers ---------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_during_a_table_with_workers_is_one_line_and_a_rerun_completes(
        tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> None:
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [sys.executable, "-m", "harness.cli", "table", "C2", "--demo", *stores(tmp_path, demo_cache),
           "--out", str(tmp_path), "--workers", "2"]
    log = tmp_path / "table.log"
    with process_group(cmd, cli_env(**{FAULT_ENV: "table-row:start|sleep=30"}), log) as proc:
        wait_until("two rows running", lambda: trial_states(storage)["RUNNING"] >= 2, 180, proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        assert group_gone(proc.pid), log.read_text()
    text = log.read_text()
    assert code == 130, text
    assert "Traceback" not in text, text
    assert [x for x in text.splitlines() if x.startswith("granalign")] == [
        "granalign: interrupted; what was finished is kept, a rerun resumes"]
    again = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    import optuna

    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    complete = [t.params["row"] for t in optuna.load_study(study_name=name, storage=storage).trials
                if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 5


# -- a run killed while writing -------------------------------------------------------------------
def test_the_temp_folder_of_a_killed_run_is_removed_by_the_next(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "runs" / "r"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(DEMO_CONFIG), "--cache", str(demo_cache), "--out", str(out)]
    killed = subprocess.run(cmd, cwd=REPO, env=cli_env(**{FAULT_ENV: "run:writing|kill"}), capture_output=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in (tmp_path / "runs").iterdir()]
    assert len(left) == 1 and left[0].startswith(".r.") and left[0].endswith(".tmp"), left
    again = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]


def test_a_temp_file_of_a_live_process_is_kept(tmp_path: Path) -> None:
    from harness.core.io import atomic_write_text

    mine = tmp_path / f".f.json.{os.getpid()}-abc.tmp"
    mine.write_text("in use")
    dead = tmp_path / ".f.json.999999999-abc.tmp"
    dead.write_text("left by a killed writer")
    atomic_write_text(tmp_path / "f.json", "{}")
    assert mine.exists() and not dead.exists()


def test_a_folder_written_file_by_file_is_listed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep writes a per-query file per trial into one folder: listing the folder at
    every write made n writes cost n^2."""
    from harness.core import io

    listed: list[str] = []
    scandir = os.scandir
    monkeypatch.setattr(io.os, "scandir", lambda p: (listed.append(str(p)), scandir(p))[1])
    (tmp_path / ".t0.npz.999999999-x.tmp").write_text("left by a killed writer")
    for i in range(50):
        io.atomic_write_bytes(tmp_path / f"t{i}.npz", b"x")
    assert listed == [str(tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"t{i}.npz" for i in range(50))


# -- hostile YAML ---------------------------------------------------------------------------------
def _bomb_config(ws: Workspace, where: str) -> Path:
    """A run config whose `tags` hold nine levels of aliases (which the old loader expanded
    when the tags were made strings, or the config dumped: minutes and gigabytes), and
    another key that names the last level."""
    extra = {"tags": "", "name": "name: *i\n", "pairing": "pairing: *i\n"}[where]
    return ws.write("bomb.yaml", f"base: {DEMO_CONFIG}\n" + BOMB + extra)


@pytest.mark.parametrize("where", ["tags", "name", "pairing"])
def test_an_alias_bomb_in_a_run_config_is_refused_at_once(where: str, ws: Workspace, demo_cache: Path) -> None:
    cfg = _bomb_config(ws, where)
    t0 = time.monotonic()
    err = ws.run("run", str(cfg), "--cache", str(demo_cache), names=("bomb.yaml:8", "aliases expand"))
    assert time.monotonic() - t0 < 10 and len(err) < 2000


def test_alias_bombs_in_sweeps_overrides_and_tables_are_refused(ws: Workspace, demo_cache: Path) -> None:
    t0 = time.monotonic()
    head = yaml.safe_dump({"name": "s", "base": str(DEMO_CONFIG), "objectives": [{"metric": "MR-full-mAP"}]})
    space = ws.write("s.yaml", head + "space: {tags: {type: categorical, choices: [" + FLOW_BOMB + "]}}\n")
    ws.run("sweep", str(space), "--demo", "--cache", str(demo_cache), names=("s.yaml:5", "aliases expand"))
    over = ws.write("o.yaml", head + "space: {lam: {type: float, low: 0.0, high: 0.6}}\noverrides: {tags: "
                    + FLOW_BOMB + "}\n")
    ws.run("sweep", str(over), "--demo", "--cache", str(demo_cache), names=("o.yaml:6", "aliases expand"))
    ws.run("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--set", "tags=" + FLOW_BOMB,
           names=("override", "refused"))
    ws.run("table", "3", "--demo", "--cache", str(demo_cache), "--set", "tags=" + FLOW_BOMB,
           names=("override", "refused"))
    table = ws.write("table9.yaml", (REPO / "ablations" / "table3.yaml").read_text() + "x: " + FLOW_BOMB + "\n")
    ws.run("table", str(table), "--demo", "--cache", str(demo_cache), names=("table9.yaml:", "aliases expand"))
    loop = ws.write("loop.yaml", "base: " + str(DEMO_CONFIG) + "\ntags: &t {a: *t}\n")
    ws.run("run", str(loop), "--cache", str(demo_cache), names=("loop.yaml:2", "contains itself"))
    assert time.monotonic() - t0 < 30


def test_a_config_nested_thousands_deep_names_its_file(ws: Workspace, demo_cache: Path) -> None:
    cfg = ws.write("deep.yaml", "a: " + "[" * 100000)
    ws.run("run", str(cfg), "--cache", str(demo_cache), names=("deep.yaml", "nested"))


def test_small_aliases_still_load(tmp_path: Path) -> None:
    from harness.core.yaml_io import parse_yaml

    assert parse_yaml("a: &x {b: 1}\nc: *x\n", "f") == {"a": {"b": 1}, "c": {"b": 1}}


# -- sweeps that must stop on their own ---------------------------------------------------------------
def test_a_sweep_whose_every_trial_fails_stops_with_one_line(ws: Workspace, demo_cache: Path) -> None:
    space = ws.write("nan.yaml", yaml.safe_dump({
        "name": "nan", "base": str(DEMO_CONFIG), "objectives": [{"metric": "MR-short-mAP"}],
        "space": {"lam": {"type": "float", "low": 0.0, "high": 0.6, "step": 0.1}}}))
    t0 = time.monotonic()
    err = ws.run("sweep", str(space), "--demo", "--cache", str(demo_cache), "--set", "limit=3",
                 "--n-trials", "1000000", names=("sweep nan", "3 trials failed", "MR-short-mAP = nan"), writes=True)
    assert time.monotonic() - t0 < 120
    assert "is not acceptable" not in err  # Optuna's own warning, once per trial, is not the message
    assert trial_states(f"sqlite:///{ws.root}/optuna.db")["FAIL"] == 3


def test_failures_of_an_earlier_command_do_not_stop_a_rerun(ws: Workspace, demo_cache: Path) -> None:
    """A study whose earlier command's trials all failed (its cache since filled) resumes:
    only the failures of this command count toward the bound, with or without the attribute
    that names their command."""
    import optuna

    from harness.config.settings import Settings
    from harness.config.sweep import load_sweep
    from harness.runner.studies import WORKER_ATTR
    from harness.runner.sweeps import study_name

    storage = f"sqlite:///{ws.root}/optuna.db"
    name = study_name(load_sweep(DEMO_SWEEP), Settings(demo=True, cache_dir=str(demo_cache)))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for attrs in ({"error": "missing: embeddings"}, {"error": "missing: embeddings", WORKER_ATTR: {"sweep_run": "old", "trial": 1}},
                  {"error": "missing: embeddings"}, {"error": "missing: embeddings"}):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
    ws.run("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--n-trials", "2", code=0, writes=True)
    assert trial_states(storage)["COMPLETE"] + trial_states(storage)["PRUNED"] == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sweep_whose_trials_raise_stops_with_one_line(tmp_path: Path, demo_cache: Path, workers: int,
                                                        mlflow_db_template: Path) -> None:
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo", *stores(tmp_path, demo_cache),
           "--n-trials", "50", "--workers", str(workers)]
    res = subprocess.run(cmd, cwd=REPO, env=cli_env(**{FAULT_ENV: "sweep:trial"}), capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("granalign")]
    assert len(lines) == 1 and "trials failed" in lines[0] and "InjectedFault" in lines[0], res.stderr
    assert trial_states(f"sqlite:///{tmp_path}/optuna.db")["FAIL"] <= 3 + workers


def test_a_sweep_stops_at_its_time_budget(ws: Workspace, demo_cache: Path) -> None:
    t0 = time.monotonic()
    err = ws.run("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--n-trials", "1000000",
                 "--timeout", "3", code=0, writes=True)
    assert time.monotonic() - t0 < 90
    assert "time budget of 3 s reached" in err
    runs = mlflow_runs(f"sqlite:///{ws.root}/mlflow.db", "sweep-demo")
    parent = [r for r in runs if r.data.tags.get("granalign.kind") == "parent"]
    assert [p.info.status for p in parent] == ["FINISHED"]


def test_a_time_budget_that_ends_in_the_cross_validation_says_so(ws: Workspace, demo_cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's own search finishes; the fold searches cannot within the budget: no
    estimate from cut-short searches, the sweep's result kept, one note, exit 0."""
    monkeypatch.setenv(FAULT_ENV, "sweep:trial|sleep=1.5")
    err = ws.run("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--n-trials", "3", "--cv", "2",
                 "--timeout", "12", code=0, writes=True)
    assert "during the cross-validation" in err and "no estimate" in err, err
    runs = mlflow_runs(f"sqlite:///{ws.root}/mlflow.db", "sweep-demo")
    parent = [r for r in runs if r.data.tags.get("granalign.kind") == "parent"]
    assert [p.info.status for p in parent] == ["FINISHED"] and "cv/MR-full-mAP" not in parent[0].data.metrics


def test_sweep_tags_reach_mlflow_and_a_swept_override_is_said(ws: Workspace, demo_cache: Path) -> None:
    """`--set tags={...}` used to appear nowhere in MLflow; `--set lam=...` with `lam` in the
    space was logged on the parent as if applied. Now the tags are on every run, and the
    override is named as not applied (and does not make another study)."""
    import optuna

    sweep = ("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--n-trials", "2")
    ws.run(*sweep, "--set", "tags={team: vision}", code=0, writes=True)
    err = ws.run(*sweep, "--set", "tags={team: vision}", "--set", "lam=0.55", code=0, writes=True)
    assert "note: not applied: lam=0.55 (the sweep's space sets lam on every trial)" in err
    assert len(optuna.get_all_study_summaries(f"sqlite:///{ws.root}/optuna.db")) == 1  # the same study
    runs = mlflow_runs(f"sqlite:///{ws.root}/mlflow.db", "sweep-demo")
    assert len(runs) == 3 and all(r.data.tags.get("team") == "vision" for r in runs)


# -- an MLflow server that does not answer; passwords ---------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_mlflow_server_is_retried_visibly_then_one_line(
        ws: Workspace, demo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://bob:PASSWORD@127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("GRANALIGN_RETRY_SECONDS", "3")
    t0 = time.monotonic()
    err = ws.run("table", "3", "--demo", "--cache", str(demo_cache), names=("http://bob:***@127.0.0.1",
                                                                             "does not answer"), writes=True)
    assert time.monotonic() - t0 < 60
    assert "PASSWORD" not in err
    assert "retrying in" in err  # said, not silent


def test_an_mlflow_database_server_that_does_not_answer_is_one_bounded_line(
        ws: Workspace, demo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's SQL store retries its first connection itself, silently, for about 100 s:
    the harness's own bounded retry decides instead."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://bob:PASSWORD@127.0.0.1:{_closed_port()}/mlflow")
    monkeypatch.setenv("GRANALIGN_RETRY_SECONDS", "0")
    t0 = time.monotonic()
    err = ws.run("table", "3", "--demo", "--cache", str(demo_cache),
                 names=("postgresql://bob:***@127.0.0.1", "does not answer"), writes=True)
    assert time.monotonic() - t0 < 40 and "PASSWORD" not in err


def test_the_readme_postgresql_url_form_needs_no_other_driver(ws: Workspace, demo_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`postgresql://user@host/db` (the README's form) uses the driver SQLAlchemy picks for
    it (psycopg 3): a server that is not there is that, not 'No module named psycopg'."""
    monkeypatch.setenv("GRANALIGN_RETRY_SECONDS", "0")
    url = f"postgresql://bob:PASSWORD@127.0.0.1:{_closed_port()}/granalign"
    err = ws.run("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--storage", url,
                 names=("postgresql://bob:***@127.0.0.1", "does not answer"), writes=True)
    assert "No module named" not in err and "PASSWORD" not in err


def test_one_redaction_for_every_line() -> None:
    e = RuntimeError("API request to http://bob:PASSWORD@host:5000/api/2.0/mlflow/runs/get failed")
    assert user_message(ValueError(str(e))) == "API request to http://bob:***@host:5000/api/2.0/mlflow/runs/get failed"
    assert redact("postgresql://u:p@h/d?password=x") == "postgresql://u:***@h/d?password=***"


def test_a_long_password_is_redacted_before_a_line_is_shortened() -> None:
    """A cut inside the password would leave a fragment the redaction no longer recognises."""
    secret = "S3cretTokenValue0123456789abcdef" * 2
    url = f"http://granalign-tracking-user:{secret}@tracking.example.org:5000"
    for text in (f"cannot reach {url}/api/2.0/mlflow/runs/get " + "x" * 300, "y" * 120 + url + "z" * 300):
        for shown in (user_message(ValueError(text)) or "", shorten(text, 100), store_failure(ConnectionRefusedError(text)) or ""):
            assert not any(secret[i:i + 8] in shown for i in range(len(secret) - 8)), shown


@pytest.mark.parametrize(("url", "says"), [("mysql://u@127.0.0.1/db", "is not installed"),
                                           ("mysql+nosuchdriver://u@127.0.0.1/db", "no such database driver")])
def test_a_missing_database_driver_is_named(url: str, says: str, ws: Workspace, demo_cache: Path) -> None:
    ws.run("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--storage", url,
           names=("mysql", says), writes=True)


def test_checking_a_database_keeps_this_processs_locks_on_it(tmp_path: Path) -> None:
    """Checking a store URL while this process holds a WAL connection to it (a sweep checks
    its storage again for every fold) must not drop that connection's lock: another
    process's last close would then checkpoint and delete the WAL under it, and the study's
    database was found damaged after a cross-validated sweep."""
    from harness.core.stores import check_sqlite_file

    db = tmp_path / "optuna.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (i)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.execute("SELECT * FROM t").fetchall()
    check_sqlite_file(db, "Optuna storage")
    subprocess.run([sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(db)!r}); "
                    "c.execute('SELECT * FROM t').fetchall(); c.close()"], check=True, timeout=60)
    assert (tmp_path / "optuna.db-wal").exists(), "another process took itself for the last connection"
    con.close()
    (tmp_path / "not.db").write_bytes(b"\x1f\x8b" + bytes(200))
    with pytest.raises(Exception, match="not an SQLite database"):
        check_sqlite_file(tmp_path / "not.db", "Optuna storage")


# -- what a database error means ---------------------------------------------------------------------
def test_a_full_disk_is_not_called_damage() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert store_failure(full) is not None and "disk is full" in store_failure(full)  # type: ignore[operator]
    assert "damaged" not in (user_message(full) or "")
    assert "damaged" in (user_message(sqlite3.DatabaseError("file is not a database")) or "")
    wrapped = RuntimeError("An exception is raised during the commit. invalid data in the commit")
    wrapped.__cause__ = full
    assert "disk is full" in (user_message(wrapped) or "")


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs: room for the stores, then filled to the last byte by `fill`."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of `folder` (a filler file grown until ENOSPC)."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with contextlib.suppress(OSError), open(folder / "filler2", "wb") as f:
        while True:
            f.write(b"\0" * 512)
            f.flush()


@pytest.mark.parametrize("store", ["optuna", "mlflow"])
def test_a_full_disk_under_a_store_is_one_line_naming_it(store: str, ws: Workspace, demo_cache: Path,
                                                         small_disk: Path, mlflow_db_template: Path) -> None:
    db = small_disk / f"{store}.db"
    if store == "mlflow":
        shutil.copy(mlflow_db_template, db)
    flag = "--storage" if store == "optuna" else "--tracking-uri"
    args = ("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), flag, f"sqlite:///{db}")
    ws.run(*args, "--n-trials", "1", code=0, writes=True)
    fill(small_disk)
    err = ws.run(*args, "--n-trials", "30", names=(str(db), "disk is full"), writes=True)
    assert "invalid data in the commit" not in err and "damaged" not in err


def test_a_full_disk_under_the_cache_is_named_not_damaged(small_disk: Path) -> None:
    from harness.cache.store import Cache, Producer
    from harness.core.errors import StoreError

    cache = Cache(small_disk / "cache")
    producer = Producer("captions_agnostic", "test")
    cache.put(producer, {"vid": "v0"}, ["a caption"])
    fill(small_disk)
    with pytest.raises(StoreError) as e:
        cache.put_many(producer, [({"vid": f"v{i}"}, ["x" * 2000] * 50, "ok", None) for i in range(200)])
    line = user_message(e.value) or ""
    assert str(small_disk / "cache" / "cache.sqlite") in line and "disk is full" in line and "damaged" not in line


def test_a_cache_opened_on_a_full_disk_is_named(small_disk: Path) -> None:
    """The first connection (its WAL and shared-memory files made on a full disk), not only a write."""
    from harness.cache.store import Cache, Producer
    from harness.core.errors import StoreError

    producer = Producer("captions_agnostic", "test")
    cache = Cache(small_disk / "cache")
    cache.put(producer, {"vid": "v0"}, ["a caption"])
    cache.close()
    fill(small_disk)
    with pytest.raises(StoreError) as e:
        Cache(small_disk / "cache").put(producer, {"vid": "v1"}, ["another caption"])
    line = user_message(e.value) or ""
    assert str(small_disk / "cache" / "cache.sqlite") in line and "disk is full" in line, line


def test_a_full_disk_under_out_names_the_run_folder(ws: Workspace, demo_cache: Path, small_disk: Path) -> None:
    fill(small_disk)
    err = ws.run("run", str(DEMO_CONFIG), "--cache", str(demo_cache), "--out", str(small_disk / "r"),
                 names=(str(small_disk / "r"), "No space left"), writes=True)
    assert ".tmp" not in err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "filler2"]  # nothing half-written


def test_stdout_on_a_full_disk_keeps_the_best_config(tmp_path: Path, demo_cache: Path, small_disk: Path,
                                                     mlflow_db_template: Path) -> None:
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    best = tmp_path / "best.yaml"
    fill(small_disk)
    with open(small_disk / "filler2", "ab") as out:  # a file on the full disk as stdout
        res = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo",
                              *stores(tmp_path, demo_cache), "--n-trials", "2", "--best-config", str(best)],
                             cwd=REPO, env=cli_env(), stdout=out, stderr=subprocess.PIPE, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert "standard output" in res.stderr and "No space left" in res.stderr
    assert yaml.safe_load(best.read_text())["name"] == "best-demo"


# -- two tables at once -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_row_another_process_computes_is_running_elsewhere_never_failed(
        tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> None:
    from harness.config.settings import Settings
    from harness.core.results import Running
    from harness.report.tracking import TABLE_TAG
    from harness.tables.run import run_table

    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "harness.cli", "table", "C2", "--demo", *stores(tmp_path, demo_cache),
           "--out", str(tmp_path / "first")]
    log = tmp_path / "first.log"
    with process_group(cmd, cli_env(**{FAULT_ENV: "table-row:start#lam=0.2|sleep=25"}), log) as proc:
        def slow_row_running() -> bool:
            import optuna

            with contextlib.suppress(Exception):
                (s,) = optuna.get_all_study_summaries(storage)
                study = optuna.load_study(study_name=s.study_name, storage=storage)
                return any(t.state.name == "RUNNING" and t.params.get("row") == "lam=0.2" for t in study.trials)
            return False

        wait_until("row lam=0.2 running", slow_row_running, 180, proc, log)
        settings = Settings(demo=True, cache_dir=str(demo_cache), storage=storage, tracking_uri=uri,
                            out_dir=str(tmp_path / "second"), artifacts=False)
        second = run_table("C2", settings, echo=False)
        assert isinstance(second.results["lam=0.2"], Running), second.results["lam=0.2"]
        assert "running elsewhere" in second.rendered["md"] and "failed" not in second.rendered["md"]
        written = [p.name for p in (tmp_path / "second").rglob("tableC2*") if p.is_file()]
        assert written == []  # not written as the table (per-query files of its own rows are kept)
        assert proc.wait(timeout=240) == 0, log.read_text()
    parent = [r for r in mlflow_runs(uri, "table-C2") if r.data.tags.get("granalign.kind") == "parent"]
    logged = {k: v for k, v in parent[0].data.tags.items() if k.startswith(TABLE_TAG + ".table")}
    assert list(logged.values()) == ["tableC2.json:" + list(logged.values())[0].split(":")[1]]  # once, complete
    again = run_table("C2", settings, echo=False)
    assert all(isinstance(r, dict) for r in again.results.values())


# -- --out, --best-config, the working folder ---------------------------------------------------------
def test_out_through_a_symlink_replaces_the_folder_it_names(ws: Workspace, demo_cache: Path) -> None:
    run = ("run", str(DEMO_CONFIG), "--cache", str(demo_cache))
    ws.run(*run, "--out", str(ws.root / "first"), code=0, writes=True)
    (ws.root / "link").symlink_to(ws.root / "first")
    ws.run(*run, "--set", "lam=0.5", "--out", str(ws.root / "link"), code=0, writes=True)
    assert (ws.root / "link").is_symlink()
    assert yaml.safe_load((ws.root / "first" / "config.yaml").read_text())["lam"] == 0.5
    assert sorted(p.name for p in ws.root.iterdir() if p.name.startswith(".")) == []
    (ws.root / "dangling").symlink_to(ws.root / "nowhere")
    err = ws.run(*run, "--out", str(ws.root / "dangling"), names=(str(ws.root / "dangling"), "does not exist"))
    assert ".tmp" not in err
    (ws.root / "to-file").symlink_to(ws.root / "first" / "config.yaml")
    ws.run(*run, "--out", str(ws.root / "to-file"), names=("to-file", "not a folder"))


def test_best_config_is_checked_before_the_sweep(ws: Workspace, demo_cache: Path) -> None:
    (ws.root / "folder").mkdir()
    sweep = ("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache))
    ws.run(*sweep, "--best-config", str(ws.root / "folder"), names=("folder", "is a folder"))
    ws.run(*sweep, "--best-config", str(ws.root / "no" / "best.yaml"), names=("best.yaml", "does not exist"))
    assert not (ws.root / "optuna.db").exists()


def test_a_deleted_working_folder_is_said(ws: Workspace, demo_cache: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    gone.rmdir()
    try:
        ws.run("table", "3", "--demo", "--cache", str(demo_cache), names=("current folder no longer exists",))
    finally:
        os.chdir(ws.root)


# -- upper bounds -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("eval", "--dataset", "demo:val", "--pred", "p.jsonl", "--ci", "--resamples", "100000000"),
    ("compare", "--dataset", "demo:val", "a", "b", "--resamples", "20001"),
    ("table", "3", "--demo", "--workers", "1000"),
    ("sweep", "s.yaml", "--workers", "33"),
    ("sweep", "s.yaml", "--timeout", "0"),
    ("sweep", "s.yaml", "--timeout", "nan"),
    ("sweep", "s.yaml", "--timeout", "1e12"),
])
def test_documented_upper_bounds(args: tuple[str, ...], ws: Workspace) -> None:
    t0 = time.monotonic()
    ws.run(*args, names=("from 1 to",) if "--timeout" not in args else ("seconds",))
    assert time.monotonic() - t0 < 5


# -- long values, compressed and piped files ----------------------------------------------------------
def test_a_huge_value_is_shortened_in_the_error_line(ws: Workspace, demo_cache: Path) -> None:
    cfg = ws.write("big.yaml", f"base: {DEMO_CONFIG}\nname: '{'x' * 2_000_000}'\n")
    err = ws.run("run", str(cfg), "--cache", str(demo_cache), names=("big.yaml", "characters left out"))
    assert len(err) < 2000


def test_a_gzip_file_is_called_gzip(ws: Workspace, data_root: Path) -> None:
    import gzip

    pred = ws.write("preds.jsonl.gz", gzip.compress(b'{"qid": 1}\n'))
    ws.run("eval", "--dataset", "qvhighlights:val", "--pred", str(pred), "--data-root", str(data_root),
           names=("preds.jsonl.gz", "gzip-compressed"))
    cfg = ws.write("cfg.yaml.gz", gzip.compress(b"name: x\n"))
    ws.run("run", str(cfg), names=("cfg.yaml.gz", "gzip-compressed"))


def test_predictions_can_come_from_a_pipe(tmp_path: Path, data_root: Path) -> None:
    ref = data_root / "qvhighlights" / "eval_reference" / "sample_val_preds.jsonl"
    with open(ref, "rb") as stdin:
        res = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--dataset", "qvhighlights:val",
                              "--pred", "/dev/stdin", "--data-root", str(data_root), "--json"],
                             cwd=REPO, env=cli_env(), stdin=stdin, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "brief" in json.loads(res.stdout)


def test_a_storage_path_with_braces_is_a_path(ws: Workspace, demo_cache: Path) -> None:
    """Optuna fills `{SCHEMA_VERSION}` in a storage URL with `str.format`: a folder named
    `{...}` used to fail with 'Replacement index 0 out of range'."""
    (ws.root / "{...}").mkdir()
    ws.run("sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--n-trials", "1",
           "--storage", f"sqlite:///{ws.root}/{{...}}/optuna.db", code=0, writes=True)
    assert (ws.root / "{...}" / "optuna.db").is_file()
