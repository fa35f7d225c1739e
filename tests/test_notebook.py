"""notebooks/compare_runs.ipynb, executed headless (nbclient) on two demo tables.

The test makes everything the notebook reads: Table 3 and Table 6 on the SYNTHETIC demo
in a fresh MLflow store, and a kernelspec in a temp folder that runs this interpreter
(found through JUPYTER_PATH, so nothing is installed globally). The notebook takes its
tracking URI and output folder from MLFLOW_TRACKING_URI and COMPARE_OUT.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from harness.config.settings import Settings
from harness.tables.run import run_table

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"
KERNEL = "granalign-test-python"


def make_kernelspec(root: Path) -> Path:
    """A kernelspec that starts an IPython kernel on this interpreter; `root` goes on
    JUPYTER_PATH."""
    folder = root / "kernels" / KERNEL
    folder.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (granalign test)", "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec))
    return root


def test_compare_runs_notebook(tmp_path: Path, demo_cache: Path, mlflow_db_template: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = Settings(demo=True, cache_dir=str(demo_cache), storage=f"sqlite:///{tmp_path}/optuna.db",
                        tracking_uri=uri, out_dir=str(tmp_path), artifacts=False)
    t3 = run_table("3", settings, echo=False)
    t6 = run_table("6", settings, echo=False)

    out = tmp_path / "notebook-out"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("COMPARE_OUT", str(out))
    monkeypatch.delenv("COMPARE_EXPERIMENT_A", raising=False)
    monkeypatch.delenv("COMPARE_EXPERIMENT_B", raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(make_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "cwd"  # the notebook's working directory: nothing lands in the repo
    work.mkdir()
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=180,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()
    assert not list(work.iterdir())

    # 1. Table 3's two-pair rows beside Table 6's, joined on the pairing
    with (out / "comparison.csv").open() as f:
        rows = {r["pairing"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"qs-Ca+qd-Ca", "qs-Cq+qd-Ca", "granalign", "qs-Cq+qd-Cq"}
    g = rows["granalign"]
    assert g["label A"] == "qs-Ca+qd-Cq (GranAlign)" and g["label B"] == "(c) qs-Ca+qd-Cq (GranAlign)"
    a = t3.results["qs-Ca+qd-Cq (GranAlign)"]["MR-full-mAP"]
    b = t6.results["(c) qs-Ca+qd-Cq (GranAlign)"]["MR-full-mAP"]
    assert float(g["MR-full-mAP A"]) == pytest.approx(a)
    assert float(g["MR-full-mAP B"]) == pytest.approx(b)
    assert float(g["MR-full-mAP B-A"]) == pytest.approx(b - a)
    for png in ("comparison.png", "ours_vs_paper.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png

    # 2. ours - paper for both tables, from the rendered tables on the parent runs
    with (out / "ours_vs_paper.csv").open() as f:
        delta = list(csv.DictReader(f))
    assert len(delta) == 10 + 4
    assert {d["experiment"] for d in delta} == {"table-3", "table-6"}
    row = next(d for d in delta if d["row"] == "q-Ca")
    assert float(row["mAP@avg diff"]) == pytest.approx(round(t3.results["q-Ca"]["MR-full-mAP"], 2) - 31.8, abs=0.011)

    # the notebook printed what it read and wrote
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "table-3: parent" in text and "10 rows, 10 computed, 0 missing" in text
    assert "comparison.csv" in text and "ours_vs_paper.csv" in text
