"""A table tracked through a real MLflow tracking server (not the SQLite file directly).

Starts `mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts, runs the
demo's Table 6 (4 rows) against it over HTTP, reads the runs back through the REST API
with `requests`, and stops the server by its process group.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.config.settings import Settings
from harness.tables.run import run_table

requests = pytest.importorskip("requests")

STARTUP_TIMEOUT = 60


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (the CLI and its uvicorn/gunicorn workers), then
    SIGKILL what is left after 15 s."""
    pgid = proc.pid  # start_new_session: the server leads its own group
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while group_alive(pgid) and time.monotonic() < deadline:
        proc.poll()  # reap the leader once it exits
        time.sleep(0.2)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:  # orphaned workers: init reaps them
        time.sleep(0.1)


@pytest.fixture()
def mlflow_server(tmp_path: Path, mlflow_db_template: Path) -> Any:
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_db_template, db)  # a migrated store: the server starts in seconds
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # port 0: the server binds a free port itself (a port picked here could be taken before
    # it binds) and names it in its log
    cmd = [str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", str(tmp_path / "server" / "artifacts"),
           "--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    log_path = tmp_path / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        url = None
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n"
                            + log_path.read_text(errors="replace"))
            if url is None:
                bound = re.search(r"running on (http://127\.0\.0\.1:(\d+))", log_path.read_text(errors="replace"))
                url = bound.group(1) if bound and bound.group(2) != "0" else None
            try:
                if url is not None and requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT} s:\n"
                            + log_path.read_text(errors="replace"))
            time.sleep(0.5)
        yield url, proc
    finally:
        stop_group(proc)
        log.close()


def test_table_through_mlflow_server(tmp_path: Path, demo_cache: Path, mlflow_server: Any) -> None:
    url, proc = mlflow_server
    settings = Settings(demo=True, cache_dir=str(demo_cache), storage=f"sqlite:///{tmp_path}/optuna.db",
                        tracking_uri=url, out_dir=str(tmp_path))
    run = run_table("6", settings, echo=False)
    assert run.computed == 4

    api = f"{url}/api/2.0/mlflow"
    r = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "table-6"}, timeout=10)
    r.raise_for_status()
    experiment_id = r.json()["experiment"]["experiment_id"]
    r = requests.post(f"{api}/runs/search", json={"experiment_ids": [experiment_id], "max_results": 100},
                      timeout=10)
    r.raise_for_status()
    runs = r.json()["runs"]

    def tags(run_json: dict[str, Any]) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run_json["data"].get("tags", [])}

    parents = [x for x in runs if tags(x).get("granalign.kind") == "parent"]
    children = [x for x in runs if "mlflow.parentRunId" in tags(x)]
    assert len(parents) == 1 and parents[0]["info"]["run_id"] == run.parent_run_id
    assert parents[0]["info"]["status"] == "FINISHED"
    assert len(children) == 4
    assert {tags(c)["mlflow.parentRunId"] for c in children} == {run.parent_run_id}
    for child in children:
        t = tags(child)
        assert child["info"]["status"] == "FINISHED" and t["table"] == "6"
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert params["captions"] == "blip2" and params["dataset"] == "demo:val"
        assert metrics["MR-full-mAP"] == pytest.approx(run.results[t["row"]]["MR-full-mAP"])
        assert metrics["MR-full-mIoU"] == pytest.approx(run.results[t["row"]]["MR-full-mIoU"])

    # artifacts went through the server's proxy into --artifacts-destination
    r = requests.get(f"{api}/artifacts/list", params={"run_id": children[0]["info"]["run_id"]}, timeout=10)
    r.raise_for_status()
    assert {"predictions.jsonl", "per_query.csv"} <= {f["path"] for f in r.json().get("files", [])}
    assert list((tmp_path / "server" / "artifacts").rglob("predictions.jsonl"))

    # stop it (the fixture does the same, idempotently) and check nothing is left
    stop_group(proc)
    assert proc.poll() is not None
    assert not group_alive(proc.pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=2)
