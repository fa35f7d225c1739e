"""A sweep worker's copy of its study (harness/runner/mirror.py): what it serves between
two syncs is the storage's own record plus the worker's writes, and a sweep reads the
study's trials once a trial."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from harness.config.settings import Settings
from harness.runner.mirror import MirroredStorage
from harness.runner.sweeps import run_sweep

REPO = Path(__file__).resolve().parents[1]
DEMO_SWEEP = REPO / "experiments" / "sweeps" / "demo.yaml"


def _fields(t: Any) -> tuple[Any, ...]:
    return (t.number, t.state, t.params, t.distributions, t.values, t.user_attrs, t.system_attrs,
            t.intermediate_values, t.datetime_start)


def test_the_copy_is_the_storage_plus_its_own_writes() -> None:
    backend = optuna.storages.InMemoryStorage()
    mirror = MirroredStorage(backend)
    study_id = mirror.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    done = backend.create_new_trial(study_id)
    backend.set_trial_state_values(done, TrialState.COMPLETE, [1.0])
    assert [t.number for t in mirror.sync(study_id)] == [0]
    mine = mirror.create_new_trial(study_id)
    mirror.set_trial_param(mine, "x", 0.25, FloatDistribution(0.0, 1.0))
    mirror.set_trial_user_attr(mine, "a", {"b": 1})
    mirror.set_trial_system_attr(mine, "c", "d")
    mirror.set_trial_intermediate_value(mine, 0, 0.5)
    assert [_fields(t) for t in mirror.get_all_trials(study_id)] == [
        _fields(t) for t in backend.get_all_trials(study_id)]
    assert mirror.set_trial_state_values(mine, TrialState.COMPLETE, [2.0])
    ours, theirs = mirror.get_trial(mine), backend.get_trial(mine)
    assert _fields(ours) == _fields(theirs) and ours.datetime_complete is not None


def test_what_others_write_is_seen_at_the_next_sync() -> None:
    backend = optuna.storages.InMemoryStorage()
    mirror = MirroredStorage(backend)
    study_id = mirror.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    mirror.sync(study_id)
    other = backend.create_new_trial(study_id)  # another worker's trial
    assert mirror.get_all_trials(study_id) == []
    assert [t._trial_id for t in mirror.sync(study_id)] == [other]
    assert mirror.get_all_trials(study_id, states=(TrialState.RUNNING,))[0]._trial_id == other


def test_a_taken_waiting_trial_is_running_in_the_copy() -> None:
    backend = optuna.storages.InMemoryStorage()
    mirror = MirroredStorage(backend)
    study = optuna.create_study(storage=mirror)
    study.enqueue_trial({"x": 0.5})
    mirror.sync(study._study_id)
    t = study.ask({"x": FloatDistribution(0.0, 1.0)})
    assert t.params == {"x": 0.5}
    assert _fields(mirror.get_trial(t._trial_id)) == _fields(backend.get_trial(t._trial_id))
    study.tell(t, 1.0)
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 1.0


class _Counting(optuna.storages.InMemoryStorage):
    reads = 0

    def get_all_trials(self, *args: Any, **kwargs: Any) -> list[Any]:
        _Counting.reads += 1
        return super().get_all_trials(*args, **kwargs)


def test_a_sweep_reads_the_study_once_a_trial(tmp_path: Path, demo_cache: Path, mlflow_db_template: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler, the pruner, `ask` and `tell` read the worker's copy: the storage is read
    at each claim, plus a few times by the command around the trials (without the copy,
    five times a trial)."""
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    settings = Settings(demo=True, cache_dir=str(demo_cache), storage=f"sqlite:///{tmp_path}/optuna.db",
                        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", out_dir=str(tmp_path))
    counting = _Counting()  # every store of the sweep (one worker: the trials run in this process)
    monkeypatch.setattr(optuna.storages, "get_storage",
                        lambda storage: counting if isinstance(storage, optuna.storages.RDBStorage) else storage)
    n = 16
    summary = run_sweep(DEMO_SWEEP, settings, n_trials=n, echo=False)
    assert sum(summary["trials"].get(s, 0) for s in ("COMPLETE", "PRUNED")) == n
    assert _Counting.reads <= n + 14, _Counting.reads
