"""Open the MLflow UI on a table's experiment in headless Chromium and save screenshots.

What a researcher sees after `granalign table 3 ...` and `make mlflow-ui`, checked in a real
browser: the experiment's runs table (the parent run, one child per row, the Dataset
column) and the parent run's page (the rendered table as an MLflow table artifact). The
script starts `mlflow ui` on a free port on 127.0.0.1, waits for it, takes the screenshots
with Debian's `chromium --headless`, prints what the page text contains (row names, the
dataset, the table artifact), and stops the server by its PID whatever happened.

    python benchmarks/screenshot_mlflow.py --table 3 --out runs/screenshots
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"no answer from {url} within {timeout:.0f} s")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium on PATH: apt-get install -y chromium")


def browse(url: str, png: Path | None, budget_ms: int = 20000) -> str:
    """The page's rendered DOM text; with `png`, also a screenshot of it."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}"]
    if png is not None:
        subprocess.run([*base, f"--screenshot={png}", url], check=True, capture_output=True, timeout=180)
    dom = subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, timeout=180, text=True)
    return dom.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="3", help="the table whose experiment to open (table-<id>)")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    ap.add_argument("--out", default="runs/screenshots", help="folder for the PNG files")
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(f"table-{args.table}")
    if exp is None:
        raise SystemExit(f"no MLflow experiment table-{args.table} at {args.tracking_uri}: run the table first")
    runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if r.data.tags.get("granalign.kind") == "parent"]
    if not parents:
        raise SystemExit(f"experiment table-{args.table} has no parent run")
    parent = parents[0]
    rows = sorted({r.data.tags["row"] for r in runs if r.data.tags.get("mlflow.parentRunId") ==
                   parent.info.run_id and "row" in r.data.tags})
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and r.data.tags.get("status") == "ok"]
    ref = parent.data.tags.get("granalign.reference_row")
    child = next((r for r in children if r.data.tags.get("row") == ref), children[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", args.tracking_uri, "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        root = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        wait_for(f"{root}/health")
        print(f"mlflow ui up on {root} in {time.perf_counter() - t0:.1f} s (pid {server.pid})")
        ml = "?workflowType=machine_learning"  # the "Model training" view, not GenAI's
        pages = {
            "home": f"{root}/#/experiments/{exp.experiment_id}",
            "runs": f"{root}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning",
            # the rows' runs, flat (a search shows matching child runs without their parent)
            "rows": f"{root}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                    "&searchFilter=tags.granalign.kind%20%3D%20%27row%27",
            "parent": f"{root}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}{ml}",
            "artifacts": f"{root}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/"
                         f"table{args.table}.json{ml}",
            "row": f"{root}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}/model-metrics{ml}",
        }
        for name, url in pages.items():
            png = out / f"mlflow_table{args.table}_{name}.png"
            text = browse(url, png)
            seen = [r for r in rows if r in text]
            print(f"{name}: {url}\n  screenshot {png} ({png.stat().st_size} bytes)")
            print(f"  page shows {len(seen)}/{len(rows)} row names; 'Dataset' {'Dataset' in text}; "
                  f"'Traces' tab {'Traces' in text}; 'Overview' {'Overview' in text}; "
                  f"table artifact {f'table{args.table}' in text}; GenAI 'Evaluation' {'Evaluation' in text}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
