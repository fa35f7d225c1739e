"""Studies shared through a real PostgreSQL server (what several machines would use).

CI starts a private server (.ci/postgres.sh) and exports its URL; there these tests run,
never skip (GRANALIGN_REQUIRE_POSTGRES=1). Elsewhere they skip, saying why. Each test gets a
database of its own. The same table and sweep as on SQLite: a table computed by 2 workers
gives the SQLite table's numbers; a 2-worker sweep loses a worker to SIGKILL mid-trial and
is resumed: no trial lost, none duplicated, every value the one its config gives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.config.settings import Settings
from harness.core.faults import FAULT_ENV
from harness.runner.studies import WORKER_ATTR, open_storage
from harness.tables.run import run_table
from tests.sweep_gate import waiting_at

REPO = Path(__file__).resolve().parents[1]
DEMO_SWEEP = REPO / "experiments" / "sweeps" / "demo.yaml"
URL_ENV = "GRANALIGN_TEST_POSTGRES_URL"


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    base = os.environ.get(URL_ENV)
    if not base:
        reason = f"no PostgreSQL server: {URL_ENV} is not set (.ci/run starts one)"
        if os.environ.get("GRANALIGN_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        print(f"skipped: {reason}")
        pytest.skip(reason)
    import sqlalchemy

    name = f"granalign_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as con:
            con.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _settings(root: Path, storage: str, demo_cache: Path, template: Path, **kw: object) -> Settings:
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "mlflow.db").exists():
        shutil.copy(template, root / "mlflow.db")
    return Settings(demo=True, cache_dir=str(demo_cache), storage=storage,
                    tracking_uri=f"sqlite:///{root}/mlflow.db", out_dir=str(root), artifacts=False, **kw)


def test_a_table_on_postgres_equals_the_same_table_on_sqlite(
        pg_url: str, tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> None:
    on_pg = run_table("C2", _settings(tmp_path / "pg", pg_url, demo_cache, mlflow_db_template, workers=2),
                      echo=False)
    on_sqlite = run_table("C2", _settings(tmp_path / "lite", f"sqlite:///{tmp_path}/o.db", demo_cache,
                                          mlflow_db_template), echo=False)
    assert on_pg.computed == 5 and on_pg.results == on_sqlite.results
    import optuna

    study = optuna.load_study(study_name=on_pg.study, storage=open_storage(pg_url))
    assert sorted(t.params["row"] for t in study.trials) == sorted(on_pg.results)  # each row once
    again = run_table("C2", _settings(tmp_path / "pg", pg_url, demo_cache, mlflow_db_template), echo=False)
    assert again.computed == 0 and again.results == on_pg.results


def test_a_two_worker_sweep_on_postgres_survives_a_killed_worker(
        pg_url: str, tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> None:
    import optuna

    from harness.cache.store import Cache
    from harness.config import load_config
    from harness.config.sweep import config_values, load_sweep
    from harness.eval import brief
    from harness.runner.trial import InputPool, trial

    n_trials = 8
    settings = _settings(tmp_path, pg_url, demo_cache, mlflow_db_template)
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(DEMO_SWEEP), "--demo", "--cache", str(demo_cache),
           "--storage", pg_url, "--tracking-uri", settings.tracking_uri or "", "--out", str(tmp_path),
           "--workers", "2", "--n-trials", str(n_trials)]
    gate = tmp_path / "gate"  # every trial waits here: the victim cannot finish before the kill
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env, FAULT_ENV: f"sweep:trial|gate={gate}"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    victim = None
    try:
        pid = waiting_at(gate, 1, lambda: proc.poll() is None)[0]
        storage = open_storage(pg_url)
        (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        (number,) = [t.number for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
                     if t.state.name == "RUNNING" and (t.user_attrs.get(WORKER_ATTR) or {}).get("pid") == pid]
        victim = (pid, number)
        os.kill(victim[0], signal.SIGKILL)
        gate.touch()
        assert proc.wait(timeout=240) == 0
    finally:
        gate.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]

    storage = open_storage(pg_url)
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == n_trials and len({t.number for t in trials}) == len(trials)
    killed = [t for t in trials if t.number == victim[1]]
    assert killed and killed[0].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == victim[1]]
    assert len(retried) == 1 and retried[0].params == killed[0].params
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # the same result as anywhere else: each complete trial's value is what its config gives
    spec = load_sweep(DEMO_SWEEP)
    base = load_config(DEMO_SWEEP.parent / spec.base, {"dataset": "demo:val"})
    pool = InputPool(Cache(demo_cache))
    for t in done:
        if t.state.name == "COMPLETE":
            cfg = base.replace(**config_values(spec.space, t.params))
            assert brief(trial(pool.get(cfg), cfg, highlights=False))["MR-full-mAP"] == t.value


def test_the_readme_url_form_works_as_written(pg_url: str) -> None:
    """`postgresql://user@host/db`, as the README writes it: SQLAlchemy maps it to psycopg 3,
    which the harness installs (it used to fail with "No module named 'psycopg'")."""
    import optuna

    plain = "postgresql://" + pg_url.split("://", 1)[1]
    storage = open_storage(plain)
    study = optuna.create_study(study_name="readme-form", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="readme-form", storage=plain).trials) == 2
