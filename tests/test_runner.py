"""The Optuna runner (harness/runner.py) on the built-in SYNTHETIC demo dataset.

Tables: one MLflow parent and one child per row, nothing recomputed on a second run,
`table_from_mlflow` equal to the run, missing rows as `missing: ...` (never a number) and
logged once, Fig. 8 for a sensitivity table, the same results from 2 worker processes.
Sweeps: n trials under one parent, a rerun adds none, multi-objective, a worker killed
mid-trial (its trial failed and retried, its MLflow run closed), spec errors naming the
file. Every test writes its own SQLite databases under tmp_path; the demo cache is built
once per session (conftest.py: demo_cache).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config.settings import Settings
from harness.config.sweep import load_sweep
from harness.config.table import load_table
from harness.core.errors import ConfigError
from harness.core.faults import FAULT_ENV
from harness.core.results import Failed, Missing
from harness.report.tracking import STUDY_TAG
from harness.runner.studies import WORKER_ATTR, open_storage
from harness.runner.sweeps import run_sweep
from harness.tables.rows import effective_spec, row_configs
from harness.tables.run import run_table, table_from_mlflow
from tests.sweep_gate import waiting_at

REPO = Path(__file__).resolve().parents[1]
DEMO_SWEEP = REPO / "experiments" / "sweeps" / "demo.yaml"
PROVENANCE_TAGS = ("table", "row", "config_hash", "cache_fingerprint", "git_commit",
                   "package_versions", "dataset")


SettingsFor = Callable[..., Settings]  # (root folder, **other Settings fields) -> Settings


@pytest.fixture(scope="session")
def settings_for(demo_cache: Path, mlflow_db_template: Path) -> SettingsFor:
    """Settings on the demo writing under a folder; its MLflow store starts as a copy of
    the session's empty, migrated one (creating a store takes about 9 s)."""

    def make(root: Path, **kw: Any) -> Settings:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "mlflow.db").exists():
            shutil.copy(mlflow_db_template, root / "mlflow.db")
        return Settings(
            demo=True, cache_dir=str(demo_cache), storage=f"sqlite:///{root}/optuna.db",
            tracking_uri=f"sqlite:///{root}/mlflow.db", out_dir=str(root), **kw,
        )

    return make


def client(settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.tracking_uri)


def runs_of(settings: Settings, experiment: str) -> tuple[list[Any], list[Any]]:
    """(parents, children) of an MLflow experiment."""
    c = client(settings)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("granalign.kind") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def artifact_paths(settings: Settings, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client(settings).list_artifacts(run_id, path):
        if f.is_dir:
            out |= artifact_paths(settings, run_id, f.path)
        else:
            out.add(f.path)
    return out


def ours_cells(md: str, n_columns: int) -> dict[str, list[str]]:
    """Row name -> our cells (every third cell after the row name) of a rendered table."""
    out = {}
    for line in md.splitlines():
        if not line.startswith("| ") or line.startswith("| Row") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = cells[0].replace(" \\*", "")
        out[name] = [cells[1 + 3 * k] for k in range(n_columns)]
    return out


# -- tables --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table3(tmp_path_factory: pytest.TempPathFactory, settings_for: SettingsFor) -> tuple[Settings, Any, Any]:
    """Table 3 on the demo, run twice: (settings, first run, second run)."""
    settings = settings_for(tmp_path_factory.mktemp("table3"))
    first = run_table("3", settings, echo=False)
    second = run_table("3", settings, echo=False)
    return settings, first, second


def test_table3_computes_and_logs_parent_and_children(table3: tuple[Settings, Any, Any]) -> None:
    settings, run, _ = table3
    assert run.computed == 10 and run.reused == 0
    assert len(run.results) == 10
    assert not any(isinstance(r, Missing) for r in run.results.values())
    assert all(0.0 <= r["MR-full-mAP"] <= 100.0 for r in run.results.values())

    parents, children = runs_of(settings, "table-3")
    assert len(parents) == 1 and parents[0].info.run_id == run.parent_run_id
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 10
    assert {c.data.tags["row"] for c in children} == set(run.results)
    spec = load_table("3")
    configs = row_configs(spec, settings)
    for child in children:
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        assert tags["mlflow.parentRunId"] == run.parent_run_id
        assert child.info.status == "FINISHED" and tags["status"] == "ok"
        for key in PROVENANCE_TAGS:
            assert tags.get(key), f"tag {key} missing on row {tags.get('row')}"
        assert tags["table"] == "3" and tags["dataset"] == "demo:val" and tags["synthetic"] == "true"
        assert json.loads(tags["package_versions"])["optuna"]
        # params = the row's config, every field
        assert params == configs[tags["row"]].flat_params()
        assert params["dataset"] == "demo:val"
        assert params["pairing"] == str(spec.row(tags["row"]).overrides["pairing"])
        assert tags["config_hash"] == configs[tags["row"]].hash()
        assert metrics["MR-full-mAP"] == pytest.approx(run.results[tags["row"]]["MR-full-mAP"])
        assert {"predictions.jsonl", "per_query.csv"} <= artifact_paths(settings, child.info.run_id)
        # what MLflow's UI shows: the Dataset column, the source and its commit
        (ds,) = [d.dataset for d in child.inputs.dataset_inputs]
        assert ds.name == "demo:val" and len(ds.digest) >= 8 and ds.source
        assert tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == tags["git_commit"].removesuffix("+dirty")
    parent = client(settings).get_run(run.parent_run_id)
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["demo:val"]
    assert parent.data.tags["mlflow.source.name"] and parent.data.tags["mlflow.source.git.commit"]
    # the UI opens the experiment on its runs table (classic ML), not on GenAI traces
    exp = client(settings).get_experiment_by_name("table-3")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # the rendered table is on the parent (also as an MLflow table) and on disk
    assert {"table3.md", "table3.csv", "table3.tex", "table3.json"} <= artifact_paths(settings, run.parent_run_id)
    shown = json.loads(client(settings).download_artifacts(run.parent_run_id, "table3.json", settings.out_dir)
                       and (Path(settings.out_dir) / "table3.json").read_text())
    assert len(shown["data"]) == 10 and "row" in shown["columns"]
    assert (Path(settings.out_dir) / "tables" / "table3-demo.md").read_text() == run.rendered["md"]
    assert "SYNTHETIC" in run.rendered["md"]
    # every computed cell has its bootstrap interval; rows are tested against GranAlign's row
    reference = spec.reference
    assert reference == "qs-Ca+qd-Cq (GranAlign)"
    cells = ours_cells(run.rendered["md"], len(spec.columns))
    for row, ours in cells.items():
        for cell in ours:
            value, interval = cell.split(" [", 1)
            low, high = (float(x) for x in interval.split("]")[0].split(","))
            assert low <= float(value.rstrip("‡")) <= high, (row, cell)
    assert all(not c.endswith(" ns") for c in cells[reference])
    assert f"not significantly different from row {reference}" in run.rendered["md"]
    by_row = {c.data.tags["row"]: c for c in children}
    assert "MR-full-mAP_ci_low" in by_row["q-Ca"].data.metrics
    assert "MR-full-mAP_p_vs_reference" in by_row["q-Ca"].data.metrics
    assert "MR-full-mAP_p_vs_reference" not in by_row[reference].data.metrics
    assert by_row["q-Ca"].data.tags["granalign.bootstrap"] == "1000/0"


def test_a_table_rendered_again_is_not_appended_to_its_mlflow_table(tmp_path: Path) -> None:
    from harness.report.tracking import Tracker

    tracker = Tracker("table-x", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracker.client.create_run(tracker.experiment_id).info.run_id
    rows = [{"row": "a", "R1": "1.00"}, {"row": "b", "R1": "2.00"}]
    assert tracker.log_table(parent, rows, "t.json") == "t.json"
    assert tracker.log_table(parent, rows, "t.json") is None  # unchanged: not logged again
    assert tracker.log_table(parent, rows[:1], "t.json") == "t.v2.json"  # changed: a new version
    for path, n in (("t.json", 2), ("t.v2.json", 1)):
        local = tracker.client.download_artifacts(parent, path, str(tmp_path))
        assert len(json.loads(Path(local).read_text())["data"]) == n




def test_table3_second_run_computes_nothing(table3: tuple[Settings, Any, Any]) -> None:
    settings, first, second = table3
    assert second.computed == 0 and second.reused == 10
    assert second.results == first.results
    assert second.rendered == first.rendered
    assert second.parent_run_id == first.parent_run_id
    parent = client(settings).get_run(first.parent_run_id)
    assert len(parent.inputs.dataset_inputs) == 1  # not logged again
    parents, children = runs_of(settings, "table-3")
    assert len(parents) == 1 and len(children) == 10


def test_intervals_of_rows_without_per_query_files_are_computed_again(tmp_path: Path,
                                                                      settings_for: SettingsFor) -> None:
    """Rows finished before per-query files existed (or on another machine) still get their
    intervals, the same ones, without a second trial or run (a table of its own: the
    module's Table 3 is left as it is)."""
    settings = settings_for(tmp_path, artifacts=False)
    first = run_table("C2", settings, echo=False)
    folder = Path(settings.out_dir) / "tables" / "per_query"
    assert len(list(folder.rglob("*.npz"))) == 5
    shutil.rmtree(folder)
    again = run_table("C2", settings, echo=False)
    assert again.computed == 0 and again.rendered == first.rendered
    assert len(list(folder.rglob("*.npz"))) == 5
    parents, children = runs_of(settings, "table-C2")
    assert len(parents) == 1 and len(children) == 5


def test_source_tags_name_the_command_and_mask_url_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.report.tracking import redact, source_tags

    monkeypatch.setattr("sys.argv", ["/x/.venv/bin/granalign", "table", "3", "--storage",
                                     "postgresql://ana:pw@db/g", "--set", "lam=0.2"])
    tags = source_tags()
    assert tags["mlflow.source.name"] == "granalign table 3"
    assert tags["granalign.command"] == "granalign table 3 --storage postgresql://ana:***@db/g --set lam=0.2"

    assert redact("granalign sweep s.yaml --storage postgresql://ana:s3cr:et@db:5432/g --workers 2") == (
        "granalign sweep s.yaml --storage postgresql://ana:***@db:5432/g --workers 2")
    assert redact("sqlite:///optuna.db http://host:5000") == "sqlite:///optuna.db http://host:5000"
    assert redact("postgresql://db/g?user=a&password=pw") == "postgresql://db/g?user=a&password=***"


def test_an_experiment_made_without_its_kind_gets_it(tmp_path: Path) -> None:
    from harness.report.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client(Settings(tracking_uri=uri))
    exp_id = c.create_experiment("table-old")
    assert "mlflow.experimentKind" not in c.get_experiment(exp_id).tags
    Tracker("table-old", uri)
    assert c.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_table_rerun_against_another_mlflow_store_still_renders(table3: tuple[Settings, Any, Any],
                                                                  tmp_path: Path, mlflow_db_template: Path) -> None:
    """The rows' runs live in the first store; a rerun tracked in a fresh one computes
    nothing, renders the same table and logs nothing to runs it cannot see."""
    import dataclasses

    settings, first, _ = table3
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    other = dataclasses.replace(settings, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    again = run_table("3", other, echo=False)
    assert again.computed == 0 and again.rendered["md"] == first.rendered["md"]


def test_table_from_mlflow_renders_the_same(table3: tuple[Settings, Any, Any]) -> None:
    settings, run, _ = table3
    assert table_from_mlflow("3", settings, echo=False) == run.rendered


def test_missing_rows_say_why_and_are_logged_once(tmp_path: Path, settings_for: SettingsFor) -> None:
    # the demo has no MiniGPT-v2 captions, and MiniGPT-v2 has no query-aware mode
    settings = settings_for(tmp_path, overrides={"captions": "minigptv2"})
    run = run_table("3", settings, echo=False)
    assert run.computed == 0
    assert all(isinstance(r, Missing) for r in run.results.values())
    spec = load_table("3")
    cells = ours_cells(run.rendered["md"], len(spec.columns))
    assert set(cells) == set(run.results)
    for row, ours in cells.items():
        for cell in ours:
            assert cell.startswith("missing: "), (row, cell)
            assert "captions_agnostic/minigptv2" in cell or "captions_aware/minigptv2" in cell
            assert not any(ch.isdigit() for ch in cell.replace("minigptv2", "")), (row, cell)
    assert "missing: captions_aware/minigptv2" in cells["q-Cq"][0]
    assert cells["q-Ca"][0] == "missing: captions_agnostic/minigptv2"
    assert "captions=minigptv2" in run.rendered["md"]

    run_table("3", settings, echo=False)  # again: the missing rows are not logged twice
    parents, children = runs_of(settings, "table-3")
    assert len(parents) == 1 and len(children) == 10
    assert all(c.data.tags["status"] == "missing" for c in children)
    assert all(c.data.tags["missing"].startswith("missing: ") for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    assert table_from_mlflow("3", settings, echo=False)["md"] == run.rendered["md"]


def test_override_that_every_row_sets_is_not_claimed(demo_cache: Path) -> None:
    # Table 6's rows set captions: blip2 themselves; --set captions=... does not apply to them
    settings = Settings(demo=True, cache_dir=str(demo_cache), overrides={"captions": "minigptv2"})
    note = effective_spec(load_table("6"), settings).note or ""
    assert "Not applied: captions=minigptv2" in note
    assert "run with captions=minigptv2" not in note


@pytest.fixture(scope="module")
def table_c2(tmp_path_factory: pytest.TempPathFactory, settings_for: SettingsFor) -> tuple[Settings, Any]:
    settings = settings_for(tmp_path_factory.mktemp("tableC2"))
    return settings, run_table("C2", settings, echo=False)


def test_sensitivity_table_writes_fig8(table_c2: tuple[Settings, Any]) -> None:
    settings, run = table_c2
    assert run.computed == 5
    png = Path(settings.out_dir) / "tables" / "tableC2-demo.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "plots/tableC2-demo.png" in artifact_paths(settings, run.parent_run_id)


def test_two_table_workers_give_the_same_results(tmp_path: Path, settings_for: SettingsFor,
                                                 table_c2: tuple[Settings, Any]) -> None:
    _, single = table_c2
    settings = settings_for(tmp_path, workers=2, artifacts=False)
    run = run_table("C2", settings, echo=False)
    assert run.computed == 5
    assert run.results == single.results
    _, children = runs_of(settings, "table-C2")
    rows = [c.data.tags["row"] for c in children]
    assert sorted(rows) == sorted(single.results), "a row computed twice or not at all"

    import optuna

    study = optuna.load_study(study_name=run.study, storage=settings.storage)
    done = [t.params["row"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(done) == sorted(single.results)


# -- sweeps --------------------------------------------------------------------------------------
def sweep_study(settings: Settings, summary: dict[str, Any]) -> Any:
    import optuna

    return optuna.load_study(study_name=summary["study"], storage=settings.storage)


def finished(study: Any) -> list[Any]:
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def test_sweep_runs_n_trials_under_one_parent_and_resumes(tmp_path: Path, settings_for: SettingsFor) -> None:
    settings = settings_for(tmp_path)
    summary = run_sweep(DEMO_SWEEP, settings, n_trials=6, echo=False)
    study = sweep_study(settings, summary)
    assert len(finished(study)) == 6 and len(study.trials) == 6
    assert summary["best"] and summary["best"][0]["values"][0] > 0

    parents, children = runs_of(settings, "sweep-demo")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    assert sorted(by_trial) == [t.number for t in study.trials]
    for t in study.trials:
        child = by_trial[t.number]
        assert child.data.tags[STUDY_TAG] == summary["study"]
        assert child.data.tags["status"] == ("pruned" if t.state.name == "PRUNED" else "ok")
        for name, value in t.params.items():
            assert float(child.data.params[name]) == pytest.approx(float(value))
        if t.state.name == "COMPLETE":
            assert child.data.metrics["MR-full-mAP"] == pytest.approx(t.value)

    again = run_sweep(DEMO_SWEEP, settings, n_trials=6, echo=False)
    assert again["study"] == summary["study"]
    assert len(sweep_study(settings, again).trials) == 6
    parents, children = runs_of(settings, "sweep-demo")
    assert len(parents) == 1 and len(children) == 6


def test_sweep_with_two_workers_stops_at_n_trials(tmp_path: Path, settings_for: SettingsFor,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # with Optuna's MaxTrialsCallback each worker starts one more trial while the other
    # runs its last one; the runner decides under the study's lock instead. Every trial
    # waits at a gate that opens once both workers are seen inside a trial, so both run
    # trials, however slowly the second one starts.
    import threading

    gate = tmp_path / "gate"
    monkeypatch.setenv(FAULT_ENV, f"sweep:trial|gate={gate}")
    settings = settings_for(tmp_path, workers=2)
    result: dict[str, Any] = {}

    def sweep() -> None:
        try:
            result["summary"] = run_sweep(DEMO_SWEEP, settings, n_trials=7, echo=False)
        except BaseException as e:  # noqa: BLE001 (reported below)
            result["error"] = e

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        waiting_at(gate, 2, lambda: thread.is_alive())
    finally:
        gate.touch()
        thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    study = sweep_study(settings, summary)
    assert len(finished(study)) == 7 and len(study.trials) == 7, summary["trials"]
    first: dict[int, dict[str, Any]] = {}  # worker pid -> params of its first trial
    for t in study.trials:
        first.setdefault(t.user_attrs[WORKER_ATTR]["pid"], t.params)
    assert len(first) == 2
    a, b = first.values()
    assert a != b, "both workers sampled the same parameters (same sampler seed)"
    _, children = runs_of(settings, "sweep-demo")
    assert len(children) == 7 and all(c.info.status == "FINISHED" for c in children)


def test_multi_objective_sweep(tmp_path: Path, settings_for: SettingsFor) -> None:
    spec = yaml.safe_load(DEMO_SWEEP.read_text())
    spec.update(name="demo-multi", base=str(DEMO_SWEEP.parent / spec["base"]),
                objectives=[{"metric": "MR-full-mAP", "direction": "maximize"},
                            {"metric": "MR-full-R1@0.5", "direction": "maximize"}],
                select={"rule": "weighted", "weights": {"MR-full-mAP": 1, "MR-full-R1@0.5": 1}})
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = settings_for(tmp_path)
    summary = run_sweep(path, settings, n_trials=4, echo=False)
    study = sweep_study(settings, summary)
    assert len(study.directions) == 2
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # no pruning when multi
    assert all(len(t.values) == 2 for t in study.trials)
    assert summary["best"] and all(len(b["values"]) == 2 for b in summary["best"])
    _, children = runs_of(settings, "sweep-demo-multi")
    assert len(children) == 4
    assert all("MR-full-R1_at_0.5" in c.data.metrics for c in children)


def test_real_sweep_specs_load() -> None:
    single = load_sweep(REPO / "experiments" / "sweeps" / "granalign_qvh.yaml")
    assert single.objectives == (("MR-full-mAP", "maximize"),)
    assert set(single.space) == {"lam", "gap", "n", "tau", "top_k"}
    assert single.pruner and single.pruner["type"] == "median"
    assert single.base_config().dataset == "qvhighlights:val"
    assert single.base_config().captions == "minigptv2"
    multi = load_sweep(REPO / "experiments" / "sweeps" / "granalign_qvh_multi.yaml")
    assert multi.objectives == (("MR-full-mAP", "maximize"), ("MR-full-R1@0.5", "maximize"))
    assert set(multi.space) == set(single.space)
    demo = load_sweep(DEMO_SWEEP)
    assert demo.base_config().dataset == "demo:val"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"samplr": {"type": "tpe"}}, "unknown key(s) samplr"),
        ({"space": {"lambda": {"type": "float", "low": 0.0, "high": 1.0}}}, "'lambda' is not a config key"),
        ({"space": {"lam": {"type": "uniform", "low": 0.0, "high": 1.0}}}, "space.lam needs type"),
        ({"objectives": [{"metric": "MR-full-mAP", "direction": "up"}]}, "direction must be"),
        ({"overrides": {"lamda": 0.2}}, "unknown config key(s) lamda"),
    ],
)
def test_bad_sweep_spec_names_the_file(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    spec = yaml.safe_load(DEMO_SWEEP.read_text())
    spec["base"] = str(DEMO_SWEEP.parent / spec["base"])
    spec.update(change)
    path = tmp_path / "bad_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_sweep_spec_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    path = tmp_path / "typo.yaml"
    path.write_text("name: x\nbase: nowhere.yaml\nobjectives: [{metric: MR-full-mAP}]\nspace: {}\nprunner: {}\n")
    assert main(["sweep", str(path), "--demo", "--n-trials", "1"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "prunner" in err


# -- a worker killed mid-trial, then a resume ------------------------------------------------------
def _running_trials(url: str) -> list[Any]:
    """RUNNING trials of the one study in `url`, through the runner's storage, which
    creates a fresh database's schema under the same lock as the sweep process."""
    import optuna

    try:
        storage = open_storage(url)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if not names:
            return []
        study = optuna.load_study(study_name=names[0], storage=storage)
        return [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    except Exception:  # not created yet
        return []


def _running_workers(url: str) -> list[dict[str, Any]]:
    """The worker records (host, pid, trial) of RUNNING trials whose parameters are sampled."""
    out = []
    for t in _running_trials(url):
        w = t.user_attrs.get(WORKER_ATTR) or {}
        if w.get("pid") and len(t.params) == 3:
            out.append({**w, "number": t.number})
    return out


@pytest.mark.slow  # 20-40 s: three processes, a resume
def test_sweep_survives_a_killed_worker_and_resumes(tmp_path: Path, demo_cache: Path,
                                                    settings_for: SettingsFor) -> None:
    n_trials = 6
    storage = f"sqlite:///{tmp_path}/optuna.db"
    settings = settings_for(tmp_path)
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo",
           "--cache", str(demo_cache), "--storage", storage, "--tracking-uri", settings.tracking_uri,
           "--out", str(tmp_path), "--workers", "2", "--n-trials", str(n_trials)]
    gate = tmp_path / "gate"  # every trial waits here: the victim cannot finish before the kill
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env, FAULT_ENV: f"sweep:trial|gate={gate}"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    victim = None
    try:
        pid = waiting_at(gate, 1, lambda: proc.poll() is None)[0]
        (number,) = [w["number"] for w in _running_workers(storage) if w["pid"] == pid]
        victim = (pid, number)
        os.kill(pid, signal.SIGKILL)
        gate.touch()
        assert proc.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text()
    finally:
        gate.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    first_log = (tmp_path / "sweep.log").read_text()
    # resume: the same command; it adds trials only if the first run fell short
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr

    import optuna

    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.trials
    assert len(finished(study)) == n_trials, first_log
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    # the trial the victim was running (held at the gate until after the kill; a retry
    # inherits the user attrs of the trial it retries, hence worker.trial)
    def worker(t: Any) -> tuple[Any, ...]:
        w = t.user_attrs.get(WORKER_ATTR) or {}
        return w.get("host"), w.get("pid"), w.get("trial")

    died = [t for t in trials if t.state.name not in ("COMPLETE", "PRUNED")
            and worker(t) == (socket.gethostname(), victim[0], t.number)]
    assert len(died) == 1, [(t.number, t.state.name, worker(t)) for t in trials]
    killed = died[0]
    assert killed.state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == killed.params
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]

    parents, children = runs_of(settings, "sweep-demo")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # a sweep trial's run is written when the trial ends: the killed one left none, its
    # retry has one, and nothing stays RUNNING
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    assert killed.number not in by_trial and retries[0].number in by_trial
    assert sorted(by_trial) == sorted(t.number for t in finished(study))
    assert all(c.info.status == "FINISHED" for c in children) and len(children) == n_trials

INJECTED = "InjectedFault: injected fault at table-row:start#lam=0.2 (GRANALIGN_TEST_FAULT=table-row:start#lam=0.2)"


# -- a failing row, with one worker and with two ------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_row_is_a_failed_cell_and_a_rerun_retries_it_only(
    tmp_path: Path, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    settings = settings_for(tmp_path, workers=workers, artifacts=False)
    monkeypatch.setenv(FAULT_ENV, "table-row:start#lam=0.2")
    run = run_table("C2", settings, echo=False)
    failed = run.results["lam=0.2"]
    assert isinstance(failed, Failed) and failed.reason == INJECTED
    assert run.computed == 4 and all(isinstance(run.results[r], dict) for r in run.results if r != "lam=0.2")
    cells = ours_cells(run.rendered["md"], 4)
    assert cells["lam=0.2"] == [f"failed: {INJECTED}"] * 4
    parents, children = runs_of(settings, "table-C2")
    assert [p.info.status for p in parents] == ["FINISHED"]
    status = {c.data.tags["row"]: c.info.status for c in children}
    assert status["lam=0.2"] == "FAILED" and list(status.values()).count("FINISHED") == 4

    monkeypatch.delenv(FAULT_ENV)
    again = run_table("C2", settings, echo=False)
    assert again.computed == 1 and again.reused == 4  # the failed row only
    assert all(isinstance(r, dict) for r in again.results.values())
    import optuna

    study = optuna.load_study(study_name=again.study, storage=settings.storage)
    states = sorted((t.params["row"], t.state.name) for t in study.trials)
    assert states == sorted([(r, "COMPLETE") for r in run.results] + [("lam=0.2", "FAIL")])
    parents, children = runs_of(settings, "table-C2")
    assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 6
    assert not [c for c in children if c.info.status == "RUNNING"]


# -- a table killed mid-row (kill -9) and rerun, with one worker and with two --------------------
@pytest.mark.parametrize("point", ["table-row:computed", "table-row:written"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_table_killed_mid_row_and_rerun_computes_each_row_once(
    tmp_path: Path, settings_for: SettingsFor, workers: int, point: str
) -> None:
    """Each worker is SIGKILLed in its second row, before its trial was told: with the
    row's MLflow run open (`computed`) or already written (`written`). The rerun reaps the
    dead trials, closes their runs, computes only what is missing: one COMPLETE trial and
    one FINISHED run per row, nothing RUNNING, nothing computed twice."""
    import optuna


    settings = settings_for(tmp_path, workers=workers, artifacts=False)
    cmd = [sys.executable, "-m", "harness.cli", "table", "C2", "--demo", "--cache", str(settings.cache_dir),
           "--storage", settings.storage, "--tracking-uri", settings.tracking_uri, "--out", str(tmp_path),
           "--workers", str(workers)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    first = subprocess.run(cmd, cwd=REPO, env={**env, FAULT_ENV: f"{point}@2|kill"},
                           capture_output=True, text=True, timeout=300)
    assert first.returncode != 0 or workers > 1, first.stdout + first.stderr  # the one worker died
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(settings.storage)]
    study = optuna.load_study(study_name=name, storage=settings.storage)
    # each worker killed mid-row: its trial stays RUNNING (one worker: the process is gone)
    # or is already failed by the parent process, which outlives its workers
    assert sum(t.state.name in ("RUNNING", "FAIL") for t in study.trials) == workers
    done_before = {t.params["row"] for t in study.trials if t.state.name == "COMPLETE"}

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name=name, storage=settings.storage)
    rows = [r.name for r in load_table("C2").rows]
    complete = [t.params["row"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(rows)  # each row exactly once
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    assert sum(t.state.name == "FAIL" for t in study.trials) == workers  # the killed ones, reaped
    assert f"{len(rows) - len(done_before)} rows computed, {len(done_before)} reused" in again.stdout
    parents, children = runs_of(settings, "table-C2")
    assert [p.info.status for p in parents] == ["FINISHED"]
    finished_rows = [c.data.tags["row"] for c in children if c.info.status == "FINISHED"]
    assert sorted(finished_rows) == sorted(rows)
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert sum(c.info.status == "KILLED" for c in children) == workers


# -- a sweep under a declared substitution; every child run carries its whole config --------------
def test_a_sweep_with_a_substitution_runs_and_its_best_config_says_so(
    tmp_path: Path, demo_cache: Path, mlflow_db_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`granalign sweep ... --substitute Cq=Ca`: the substitution is a command-line option,
    not a config key (it used to fail with "unknown config key(s) substitute"). Trials run
    the substituted pairing and say so; the best config's header names the substitution,
    and `granalign run` with it reproduces the trial's value."""
    from harness.cli import main

    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    stores = ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
              "--cache", str(demo_cache), "--out", str(tmp_path)]
    best = tmp_path / "best.yaml"
    rc = main(["sweep", str(DEMO_SWEEP), "--demo", "--set", "frame_filter=caption-text", "--substitute", "Cq=Ca",
               "--n-trials", "3", "--best-config", str(best), *stores])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert sum(summary["trials"].get(s, 0) for s in ("COMPLETE", "PRUNED")) == 3
    header = [line for line in best.read_text().splitlines() if line.startswith("#")]
    assert "with --substitute Cq=Ca" in header[-1]
    settings = Settings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    _, children = runs_of(settings, "sweep-demo")
    assert len(children) == 3
    fields = set(load_sweep(DEMO_SWEEP).base_config({"dataset": "demo:val"}).flat_params())
    for child in children:
        assert child.data.tags["granalign.substitutions"] == "Cq=Ca"
        assert set(child.data.params) == fields  # the whole config, as a table row's run
        assert json.loads(child.data.params["pairing"]) == [["qs", "Ca"], ["qd", "Ca"]]
    done = [c for c in children if c.data.tags.get("status") == "ok"]
    best_value = summary["best"][0]["values"][0]
    assert main(["run", str(best), "--substitute", "Cq=Ca", "--cache", str(demo_cache),
                 "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["brief"]["MR-full-mAP"] == pytest.approx(best_value, abs=1e-9), done


def test_a_heartbeat_keeps_what_the_claim_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim's attribute (e.g. the sweep command that ran the trial, which the failure
    bound counts by) survives the heartbeats: a beat renews the time only."""
    import time

    import optuna

    from harness.runner import studies

    monkeypatch.setattr(studies, "HEARTBEAT_INTERVAL", 0.05)
    study = optuna.create_study()
    t = study.ask()
    studies.claim(t, sweep_run="this-command")
    first = t.user_attrs[WORKER_ATTR]["beat"]
    beat = studies.Heartbeat()
    try:
        with beat.running(t):
            time.sleep(0.5)
    finally:
        beat.stop()
    w = studies.worker_of(study.trials[0])
    assert w["sweep_run"] == "this-command" and w["beat"] > first


def test_a_trial_asked_but_never_claimed_is_reaped() -> None:
    """A worker killed between `ask` and its claim (both under the study's lock) leaves a
    RUNNING trial that names no worker: the next reap, under the lock, fails it."""
    import optuna

    from harness.runner import studies

    study = optuna.create_study()
    study.ask()  # never claimed
    claimed = study.ask()
    studies.claim(claimed)
    failed = studies.reap_dead_trials(study)
    assert [t.number for t in failed] == [0]
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]


def test_a_background_trackers_write_error_is_raised_by_drain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run the writer thread could not write is not lost silently: `drain` raises its error, once."""
    from harness.report.tracking import Tracker

    tracker = Tracker("drain-errors", f"sqlite:///{tmp_path}/mlflow.db", background=True)

    def fail(*args: Any) -> None:
        raise RuntimeError("store gone")

    monkeypatch.setattr(tracker, "_send", fail)
    parent = tracker.parent("s", "s", {})
    tracker.finish(tracker.child(parent, "c", "trial", {}, {}, defer=True))
    with pytest.raises(RuntimeError, match="store gone"):
        tracker.drain()
    tracker.drain()  # raised once
