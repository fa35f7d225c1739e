"""Promises the README and the command-line help make, each tested where it would break:
`sweep --best-config` writes a config that `granalign run` reproduces its trial with;
`--substitute` fills a missing input in `run` and in `sweep`, marked, and only when given;
the embedding dtype is part of the embeddings' cache key; an interrupted command exits
with status 130; the median pruner really prunes a trial, which is logged as pruned.
All on the SYNTHETIC demo (tests/conftest.py: demo_cache)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from harness.cache.embedders import embedder_model_id
from harness.cache.store import Cache
from harness.cli import main
from harness.config import ExperimentConfig, load_config
from harness.config.settings import Settings
from harness.config.sweep import config_values, load_sweep
from harness.core.faults import FAULT_ENV
from harness.core.results import MissingInputs
from harness.eval import brief
from harness.runner.studies import open_storage
from harness.runner.sweeps import run_sweep
from harness.runner.trial import SUBSTITUTIONS_TAG, InputPool, embedder_models, trial
from tests.sweep_gate import waiting_at

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo.yaml"
DEMO_SWEEP = REPO / "experiments" / "sweeps" / "demo.yaml"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
NO_AWARE = ("--set", "frame_filter=caption-text")  # the demo has no aware captions behind this filter


def settings(root: Path, demo_cache: Path, template: Path, **kw: Any) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, root / "mlflow.db")
    return Settings(demo=True, cache_dir=str(demo_cache), storage=f"sqlite:///{root}/optuna.db",
                    tracking_uri=f"sqlite:///{root}/mlflow.db", out_dir=str(root), artifacts=False, **kw)


def sweep_args(root: Path, demo_cache: Path) -> list[str]:
    return ["sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache), "--storage",
            f"sqlite:///{root}/optuna.db", "--tracking-uri", f"sqlite:///{root}/mlflow.db", "--out", str(root)]


def children(s: Settings, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(s.tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    return [r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def metrics_of(folder: Path) -> dict[str, float]:
    return json.loads((folder / "metrics.json").read_text())["brief"]


# -- sweep --best-config, then granalign run ------------------------------------------------------
def test_best_config_reproduces_its_trial_with_granalign_run(tmp_path: Path, demo_cache: Path,
                                                             mlflow_db_template: Path) -> None:
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    best = tmp_path / "best.yaml"
    assert main([*sweep_args(tmp_path, demo_cache), "--n-trials", "4", "--set", "m=2",
                 "--best-config", str(best)]) == 0
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db")]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")
    top = study.best_trial
    cfg = load_config(best)
    for key, value in config_values(load_sweep(DEMO_SWEEP).space, top.params).items():
        assert getattr(cfg, key) == pytest.approx(value), key
    assert cfg.m == 2  # the command line's --set is part of what the trial ran
    assert f"trial {top.number}" in best.read_text().splitlines()[0]

    assert main(["run", str(best), "--cache", str(demo_cache), "--out", str(tmp_path / "run")]) == 0
    assert metrics_of(tmp_path / "run")["MR-full-mAP"] == top.value


# -- --substitute ------------------------------------------------------------------------------
def test_run_computes_a_missing_input_only_with_a_declared_substitution(
        tmp_path: Path, demo_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", str(DEMO), "--cache", str(demo_cache), *NO_AWARE]
    assert main([*base, "--out", str(tmp_path / "none")]) == 3  # Cq is missing: nothing is implied
    assert "missing: captions_aware" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()

    assert main([*base, "--substitute", "Cq=Ca", "--out", str(tmp_path / "sub")]) == 0
    assert "computed with the substitution(s) Cq=Ca (pairing qs-Ca+qd-Ca)" in capsys.readouterr().out
    info = json.loads((tmp_path / "sub" / "run_info.json").read_text())
    assert (info["substitutions"], info["pairing"]) == ("Cq=Ca", "qs-Ca+qd-Ca")
    # the numbers of the substituted pairing asked for directly
    assert main([*base, "--set", "pairing=qs-Ca+qd-Ca", "--out", str(tmp_path / "direct")]) == 0
    assert metrics_of(tmp_path / "sub") == metrics_of(tmp_path / "direct")


def test_sweep_computes_a_missing_input_only_with_a_declared_substitution(
        tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> None:
    plain = settings(tmp_path / "plain", demo_cache, mlflow_db_template, overrides={"frame_filter": "caption-text"})
    with pytest.raises(MissingInputs, match="captions_aware"):
        run_sweep(DEMO_SWEEP, plain, n_trials=2, echo=False)
    assert not optuna.get_all_study_summaries(plain.storage)  # stopped before any trial

    s = settings(tmp_path / "sub", demo_cache, mlflow_db_template, overrides={"frame_filter": "caption-text"},
                 substitutions=("Cq=Ca",))
    summary = run_sweep(DEMO_SWEEP, s, n_trials=3, echo=False)
    spec = load_sweep(DEMO_SWEEP)
    assert summary["study"] != spec.study_name(plain.config_overrides(), plain.substitutions)  # a study of its own
    study = optuna.load_study(study_name=summary["study"], storage=s.storage)
    assert [t.state.name for t in study.trials].count("FAIL") == 0 and len(study.trials) == 3
    runs = children(s, "sweep-demo")
    assert len(runs) == 3 and {r.data.tags[SUBSTITUTIONS_TAG] for r in runs} == {"Cq=Ca"}
    assert {r.data.params["pairing"] for r in runs} == {'[["qs","Ca"],["qd","Ca"]]'}
    # each complete trial's value is what the substituted pairing gives
    base = load_config(DEMO, {"frame_filter": "caption-text", "pairing": "qs-Ca+qd-Ca"})
    pool = InputPool(Cache(demo_cache))
    for t in study.trials:
        if t.state.name == "COMPLETE":
            cfg = base.replace(**config_values(spec.space, t.params))
            assert brief(trial(pool.get(cfg), cfg, highlights=False))["MR-full-mAP"] == t.value


# -- the embedding dtype in the cache key ----------------------------------------------------------
def test_the_embedding_dtype_is_part_of_the_embeddings_cache_key(demo_cache: Path) -> None:
    torch = {"type": "minilm", "backend": "torch"}
    assert embedder_model_id(torch) == MINILM_ID
    assert embedder_model_id({**torch, "dtype": "float32"}) == MINILM_ID
    assert embedder_model_id({**torch, "dtype": "bfloat16"}) == f"{MINILM_ID}#bfloat16"
    f32 = ExperimentConfig(dataset="demo:val", embedder_backend="torch")
    bf16 = f32.replace(embedder_dtype="bfloat16")
    assert embedder_models(bf16) == (f"{MINILM_ID}#bfloat16",) != embedder_models(f32)
    assert bf16.hash() != f32.hash()
    # the demo is embedded in float32 (by the default backend): a bfloat16 run finds
    # nothing to read, and says so
    InputPool(Cache(demo_cache)).get(f32.replace(embedder_backend=None))
    with pytest.raises(MissingInputs, match=f"missing: embeddings/{MINILM_ID}#bfloat16"):
        InputPool(Cache(demo_cache)).get(bf16)


# -- an interrupt exits with status 130 ------------------------------------------------------------
@pytest.mark.slow  # a subprocess: about 25 s
def test_an_interrupted_sweep_exits_with_status_130(tmp_path: Path, demo_cache: Path,
                                                    mlflow_db_template: Path) -> None:
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    gate = tmp_path / "gate"  # the trial waits there, never opened: ^C lands mid-trial
    cmd = [sys.executable, "-m", "harness.cli", *sweep_args(tmp_path, demo_cache), "--n-trials", "3"]
    env = {**os.environ, FAULT_ENV: f"sweep:trial|gate={gate}", "PYTHONWARNINGS": "ignore",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # SIGINT at its default in the command, as at a terminal: a test run started in the
    # background (nohup, `cmd &` in a script) ignores SIGINT, and its children inherit that
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        (pid,) = waiting_at(gate, 1, lambda: proc.poll() is None)
        assert pid == proc.pid  # one worker: the command's own process
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "granalign: interrupted; what was finished is kept, a rerun resumes" in err
    assert "Traceback" not in err
    study = optuna.load_study(study_name=optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db")[0]
                              .study_name, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert not [t for t in study.trials if t.state.name == "COMPLETE"]


# -- the median pruner prunes --------------------------------------------------------------------
def test_the_median_pruner_prunes_a_poor_trial_and_it_is_logged_as_pruned(
        tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> None:
    """Two trials of a good config, then a poor one (known from the demo: MR-full-mAP 67.50
    vs 50.00 on the first 25 % of the queries). The demo sweep's median pruner (2 startup
    trials) prunes the third at its first report."""
    s = settings(tmp_path, demo_cache, mlflow_db_template)
    spec = load_sweep(DEMO_SWEEP)
    name = spec.study_name(s.config_overrides(), s.substitutions)
    study = optuna.create_study(study_name=name, storage=open_storage(s.storage), direction="maximize")
    good, poor = {"lam": 0.3, "gap": 2, "tau": 0.9}, {"lam": 0.6, "gap": 8, "tau": 0.7}
    for params in (good, good, poor):
        study.enqueue_trial(params)
    run_sweep(DEMO_SWEEP, s, n_trials=3, echo=False)
    trials = optuna.load_study(study_name=name, storage=s.storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = trials[2]
    assert pruned.params == poor and list(pruned.intermediate_values) == [0]  # at the first step
    assert pruned.intermediate_values[0] < min(t.intermediate_values[0] for t in trials[:2])
    status = {int(r.data.tags["trial"]): r.data.tags["status"] for r in children(s, "sweep-demo")}
    assert status == {0: "ok", 1: "ok", 2: "pruned"}
