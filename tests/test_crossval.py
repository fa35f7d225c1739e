"""Numbers that hold on unseen queries: nested cross-validation of a sweep's choice, several
objectives and their selection rule, per-query results of every trial."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from harness.config.settings import Settings
from harness.config.sweep import Selection, load_sweep
from harness.core.errors import ConfigError
from harness.core.faults import FAULT_ENV
from harness.eval.bootstrap import read_per_query
from harness.runner.crossval import choose, cv_folds, pool_held_out, summarize
from harness.runner.sweeps import Fold, per_query_path, run_sweep
from tests.sweep_gate import waiting_at

REPO = Path(__file__).resolve().parents[1]
DEMO_SWEEP = REPO / "experiments" / "sweeps" / "demo.yaml"
R1, MAP = "MR-full-R1@0.5", "MR-full-mAP"


# -- folds, choice, pooling ------------------------------------------------------------------------
def test_folds_keep_a_videos_queries_together_and_are_seeded() -> None:
    vids = [f"v{i // 3}" for i in range(300)]  # 100 videos, 3 queries each
    folds = cv_folds(vids, 5, seed=1)
    for v in set(vids):
        assert len({folds[i] for i, x in enumerate(vids) if x == v}) == 1
    assert sorted(np.bincount(folds).tolist()) == [60] * 5  # 20 videos a fold
    assert (cv_folds(vids, 5, seed=1) == folds).all() and not (cv_folds(vids, 5, seed=2) == folds).all()
    with pytest.raises(ValueError, match="need at least 5 videos"):
        cv_folds(["a", "a", "b"], 5)


def test_selection_rules_by_hand() -> None:
    objectives = ((MAP, "maximize"), (R1, "maximize"))
    trials = [(0, {MAP: 40.0, R1: 50.0}), (1, {MAP: 38.0, R1: 58.0}), (2, {MAP: 39.0, R1: 57.0}),
              (3, {MAP: float("nan"), R1: 90.0})]
    weighted = Selection("weighted", objectives, {MAP: 0.5, R1: 0.5})
    assert choose(trials, weighted) == 1  # 48.0 > 48.0? no: 38+58 = 96 > 40+50 = 90, 39+57 = 96: earlier wins
    floor = Selection("floor", objectives, {}, MAP, {R1: 57.0})
    assert choose(trials, floor) == 2  # the best mAP among R1 >= 57
    assert choose(trials, Selection("floor", objectives, {}, MAP, {R1: 99.0})) is None
    one = Selection("objective", ((MAP, "minimize"),), {})
    assert choose([(0, {MAP: 3.0}), (1, {MAP: 2.0})], one) == 1


def test_a_sweep_with_several_objectives_must_say_how_it_picks(tmp_path: Path) -> None:
    text = (REPO / "experiments" / "sweeps" / "granalign_qvh_multi.yaml").read_text()
    bad = tmp_path / "multi.yaml"
    bad.write_text(text.split("select:")[0].replace("../", str(REPO / "experiments") + "/"))
    with pytest.raises(ConfigError, match="several objectives .* declares how to pick one trial"):
        load_sweep(bad)
    (tmp_path / "weights.yaml").write_text(bad.read_text() + "select: {rule: weighted, weights: {MR-full-mIoU: 1}}\n")
    with pytest.raises(ConfigError, match="select.weights should map objectives"):
        load_sweep(tmp_path / "weights.yaml")
    spec = load_sweep(REPO / "experiments" / "sweeps" / "granalign_qvh_multi.yaml")
    assert spec.selection().describe() == "largest weighted sum 0.5 * MR-full-mAP + 0.5 * MR-full-R1@0.5"


def test_pure_noise_trials_show_the_selection_optimism() -> None:
    """300 trials whose per-query hits are coin flips: every config is at chance (50 %). The
    best on all queries is well above it; nested cross-validation, which picks each fold's
    winner on the other folds only, finds chance again."""
    rng = np.random.default_rng(0)
    n_queries, n_trials, k = 800, 300, 5
    vids = [f"v{i // 2}" for i in range(n_queries)]
    hits = rng.random((n_trials, n_queries)) < 0.5
    ones = np.ones(n_queries, dtype=bool)
    on_all = hits.mean(axis=1) * 100
    best_all = int(np.argmax(on_all))
    sel = Selection("objective", ((R1, "maximize"),), {})
    folds = cv_folds(vids, k, seed=0)
    parts = []
    for f in range(k):
        train, test = folds != f, folds == f
        # the fold's "search": every trial scored on its training queries only
        winner = choose(((t, {R1: float(hits[t, train].mean() * 100)}) for t in range(n_trials)), sel)
        assert winner is not None
        parts.append((np.flatnonzero(test), {R1: (hits[winner, test].astype(float), ones[test])}))
    pooled = pool_held_out(n_queries, parts)
    out = summarize(pooled, {R1: float(on_all[best_all])}, [R1])[R1]
    assert out["best_on_all"] > 54.5  # about 3 standard errors above chance: the maximum of 300
    assert 46.0 < out["cv"] < 54.0 and out["ci_low"] < 50.0 < out["ci_high"]
    assert out["optimism"] > 2.5


# -- on the demo -------------------------------------------------------------------------------------
def settings(root: Path, demo_cache: Path, mlflow_db_template: Path, **kw: Any) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_db_template, root / "mlflow.db")
    return Settings(demo=True, cache_dir=str(demo_cache), storage=f"sqlite:///{root}/optuna.db",
                    tracking_uri=f"sqlite:///{root}/mlflow.db", out_dir=str(root), **kw)


def test_a_cross_validated_sweep_nests_its_folds_and_logs_the_estimate(
    tmp_path: Path, demo_cache: Path, mlflow_db_template: Path
) -> None:
    from mlflow.tracking import MlflowClient

    s = settings(tmp_path, demo_cache, mlflow_db_template)
    plain = run_sweep(DEMO_SWEEP, s, n_trials=4, echo=False)
    summary = run_sweep(DEMO_SWEEP, s, n_trials=4, echo=False, cv=3, cv_seed=0)
    assert summary["best"] == plain["best"]  # the sweep itself is unchanged by --cv
    cv = summary["cv"]
    assert cv["k"] == 3 and len(cv["folds"]) == 3 and set(cv["metrics"]) == {MAP}
    m = cv["metrics"][MAP]
    assert m["ci_low"] <= m["cv"] <= m["ci_high"]
    assert m["best_on_all"] == round(summary["best"][0]["values"][0], 2)
    assert abs(m["optimism"] - (m["best_on_all"] - m["cv"])) < 0.011  # each rounded apart
    # nested: a fold's search never scored a query of its held-out fold
    spec = load_sweep(DEMO_SWEEP)
    from harness.data import load_dataset

    ds = load_dataset("demo:val")
    for index, fold in enumerate(cv["folds"]):
        held = {ds.queries[i].qid for i in Fold(index, 3, 0).held_out(ds)}
        study = optuna.load_study(study_name=fold["study"], storage=s.storage)
        assert study.metric_names == [MAP]
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            saved = read_per_query(per_query_path(s, fold["study"], t.number))
            assert saved is not None and not held & set(saved.qids.tolist())
        assert fold["queries"] == len(held)
    # every trial of the sweep's own study has its per-query results, keyed by qid and cache
    main = optuna.load_study(study_name=summary["study"], storage=s.storage)
    for t in main.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        saved = read_per_query(per_query_path(s, summary["study"], t.number))
        assert saved is not None and len(saved.qids) == len(ds.queries) and saved.fingerprint
        value = 100.0 * saved.per_query[MAP][0][saved.per_query[MAP][1]].mean()
        assert round(value, 2) == t.values[0]  # re-scorable without the trial (brief metrics: 2 decimals)
    client = MlflowClient(s.tracking_uri)
    exp = client.get_experiment_by_name(f"sweep-{spec.name}")
    (parent,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("granalign.kind") == "parent"]
    metrics = parent.data.metrics
    assert metrics["cv/MR-full-mAP"] == m["cv"] and metrics["optimism/MR-full-mAP"] == m["optimism"]
    assert metrics["cv/MR-full-mAP_ci_low"] == m["ci_low"]


def test_a_rerun_of_a_cross_validated_sweep_keeps_every_folds_runs(
    tmp_path: Path, demo_cache: Path, mlflow_db_template: Path
) -> None:
    """The sweep's own study and its fold searches share one MLflow parent and the same trial
    numbers: a trial the sweep's study reaped (its worker died) must not close the fold runs
    of that number, nor make a rerun write them again."""
    from mlflow.tracking import MlflowClient

    from harness.runner.studies import REAPED_ATTR

    s = settings(tmp_path, demo_cache, mlflow_db_template)
    first = run_sweep(DEMO_SWEEP, s, n_trials=2, echo=False)
    main = optuna.load_study(study_name=first["study"], storage=s.storage)
    main.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))  # trial 2, as if reaped
    main.set_user_attr(REAPED_ATTR, [2])
    run_sweep(DEMO_SWEEP, s, n_trials=3, echo=False, cv=2, cv_seed=0)
    client = MlflowClient(s.tracking_uri)
    exp = client.get_experiment_by_name(f"sweep-{load_sweep(DEMO_SWEEP).name}")

    def fold_runs() -> list[Any]:
        return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get("cv_fold")]

    before = {(r.data.tags["cv_fold"], r.data.tags["trial"]): r.info.status for r in fold_runs()}
    assert ("1/2 (seed 0)", "2") in before and set(before.values()) == {"FINISHED"}
    run_sweep(DEMO_SWEEP, s, n_trials=3, echo=False, cv=2, cv_seed=0)  # a rerun: nothing to do
    after = [(r.data.tags["cv_fold"], r.data.tags["trial"], r.info.status) for r in fold_runs()]
    assert sorted(after) == sorted((f, t, st) for (f, t), st in before.items())


def _multi_space(tmp_path: Path) -> Path:
    text = DEMO_SWEEP.read_text().replace(
        "objectives:\n  - {metric: MR-full-mAP, direction: maximize}",
        "objectives:\n  - {metric: MR-full-mAP, direction: maximize}\n  - {metric: MR-full-R1@0.5, direction: maximize}")
    text = text.replace("base: ../demo.yaml", f"base: {REPO / 'experiments' / 'demo.yaml'}")
    text = text.replace("pruner: {type: median, n_startup_trials: 2}\n", "")
    text += "select: {rule: floor, metric: MR-full-mAP, floors: {MR-full-R1@0.5: 60}}\n"
    path = tmp_path / "multi.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_a_multi_objective_sweep_names_its_objectives_its_front_and_its_rule(
    tmp_path: Path, demo_cache: Path, mlflow_db_template: Path, workers: int
) -> None:
    space = _multi_space(tmp_path)
    s = settings(tmp_path, demo_cache, mlflow_db_template, workers=workers)
    summary = run_sweep(space, s, n_trials=6, echo=False)
    study = optuna.load_study(study_name=summary["study"], storage=s.storage)
    assert study.metric_names == [MAP, R1] and len(study.trials) == 6
    front = {t.number for t in study.best_trials}
    assert {p["number"] for p in summary["pareto"]} == front
    assert summary["select"] == "best MR-full-mAP with MR-full-R1@0.5 >= 60"
    eligible = [t for t in study.trials if t.values[1] >= 60]
    if eligible:
        assert summary["best"][0]["number"] == max(eligible, key=lambda t: (t.values[0], -t.number)).number
    best = tmp_path / "best.yaml"
    from harness.runner.sweeps import write_best_config

    if summary["best"]:
        write_best_config(best, space, summary, s.config_overrides())
        assert "Picked by the sweep's rule: best MR-full-mAP with MR-full-R1@0.5 >= 60" in best.read_text()


@pytest.mark.slow  # two subprocess sweeps
def test_a_multi_objective_sweep_resumes_after_a_killed_worker(
    tmp_path: Path, demo_cache: Path, mlflow_db_template: Path
) -> None:
    space = _multi_space(tmp_path)
    s = settings(tmp_path, demo_cache, mlflow_db_template)
    gate = tmp_path / "gate"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(space), "--demo", "--cache", str(demo_cache),
           "--storage", s.storage, "--tracking-uri", s.tracking_uri, "--out", str(tmp_path),
           "--workers", "2", "--n-trials", "5"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env, FAULT_ENV: f"sweep:trial|gate={gate}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        victim, *_ = waiting_at(gate, 2, lambda: proc.poll() is None)
        os.kill(victim, signal.SIGKILL)
        gate.touch()
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    again = subprocess.run([*cmd[:-4], "--workers", "1", "--n-trials", "5"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout[again.stdout.index("{"):again.stdout.rindex("}") + 1])
    study = optuna.load_study(study_name=summary["study"], storage=s.storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 5 and study.metric_names == [MAP, R1]
    assert any(t.state == optuna.trial.TrialState.FAIL for t in study.trials)  # the killed worker's
