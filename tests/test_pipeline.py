"""The pipeline end to end: every pairing on the demo, a real QVHighlights val subset,
the "missing" report, and `granalign run` / `granalign eval` on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cache.store import Cache
from harness.cli import main
from harness.config import ExperimentConfig, load_config
from harness.core.registries import PAIRINGS
from harness.core.results import MissingInputs
from harness.data import load_dataset
from harness.eval import brief
from harness.runner.trial import InputPool, run_config, trial

REPO = Path(__file__).resolve().parents[1]
N_REAL = 40  # QVHighlights val queries in the real-data subset (fast enough for CI)


@pytest.fixture(scope="session")
def demo(demo_cache: Path) -> Cache:
    """The session's demo cache (conftest builds it once)."""
    return Cache(demo_cache)


@pytest.mark.parametrize("pairing", PAIRINGS.names())
def test_every_pairing_runs_on_the_demo(demo: Cache, pairing: str) -> None:
    cfg = load_config(REPO / "experiments" / "demo.yaml", {"pairing": pairing})
    prep = InputPool(demo).get(cfg)
    metrics = brief(trial(prep, cfg))
    assert len(prep.queries) == 48
    for key in ("MR-full-R1@0.5", "MR-full-mAP", "HL-min-VeryGood-mAP"):
        assert 0.0 <= metrics[key] <= 100.0
    # the demo is built so that a good pairing finds most moments: a broken scorer would not
    assert metrics["MR-full-R1@0.3"] > 50.0


def test_pairing_written_as_a_yaml_list(demo: Cache) -> None:
    named = load_config(REPO / "experiments" / "demo.yaml", {"pairing": "qs-Ca+qd-Cq"})
    listed = named.replace(pairing=[["qs", "Ca"], ["qd", "Cq"]])
    pool = InputPool(demo)
    assert trial(pool.get(named), named) == trial(pool.get(listed), listed)


def test_k_m_and_fallback_change_the_scores(demo: Cache) -> None:
    base = load_config(REPO / "experiments" / "demo.yaml", {"pairing": "qd-Cq"})
    pool = InputPool(demo)
    prep = pool.get(base)
    from harness.method.recipes import predict

    def saliency(p: Any, cfg: Any) -> np.ndarray:
        return np.nan_to_num(predict(p, cfg).saliency)

    sal = {k: saliency(prep, base.replace(K=k)) for k in (5, 30)}
    assert not np.allclose(sal[5], sal[30])  # K picks which frames use aware captions
    k10 = saliency(prep, base)
    zero = saliency(prep, base.replace(cq_fallback="zero"))
    assert not np.allclose(zero, k10)
    qs = base.replace(pairing="qs-Ca")  # the demo's simplified rewrites differ by index j
    prep_qs = pool.get(qs)
    assert not np.allclose(saliency(prep_qs, qs.replace(m=1)), saliency(prep_qs, qs))


def test_run_cli_on_the_demo_writes_outputs_and_eval_agrees(tmp_path: Path, demo: Cache, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["run", str(REPO / "experiments" / "demo.yaml"), "--out", str(out),
               "--cache", str(demo.root)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed
    assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "metrics.json", "config.yaml", "run_info.json"}
    info = json.loads((out / "run_info.json").read_text())
    assert info["dataset"] == "demo:val" and info["synthetic"] is True
    assert len(info["cache_fingerprint"]) == 64 and info["git_commit"]
    metrics = json.loads((out / "metrics.json").read_text())
    rc = main(["eval", "--dataset", "demo:val", "--pred", str(out / "predictions.jsonl"), "--json"])
    assert rc == 0
    again = json.loads(capsys.readouterr().out)
    assert again["brief"] == metrics["brief"]
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["pred_relevant_windows"]) <= 10 for r in rows)
    for r in rows:  # best first, inside the video
        scores = [w[2] for w in r["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True)


def test_real_subset_q_ca_and_vtg_gpt(real_cache: Cache, data_root: Path) -> None:
    cfg = load_config(REPO / "experiments" / "granalign_qvh_minigptv2.yaml", {"limit": N_REAL})
    pool = InputPool(real_cache, data_root)
    prep = pool.get(cfg)
    assert len(prep.queries) == N_REAL
    assert prep.n_frames.max() == 75  # 150-s videos, 2-s clips
    q_ca = brief(trial(prep, cfg))
    vtg_cfg = load_config(REPO / "experiments" / "vtg_gpt_qvh.yaml", {"limit": N_REAL})
    vtg = brief(trial(pool.get(vtg_cfg), vtg_cfg))
    # change detectors on the first 40 val queries (all 1550: tests/test_pinned.py, whose
    # docstring says when a change is legitimate); R1@0.5, R1@0.7, mAP@0.5, mAP@avg
    keys = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP@0.5", "MR-full-mAP")
    assert [q_ca[k] for k in keys] == [45.0, 32.5, 41.15, 27.21]
    assert [vtg[k] for k in keys] == [55.0, 40.0, 50.51, 35.14]


def test_real_granalign_reports_every_missing_stage(real_cache: Cache, data_root: Path, tmp_path: Path) -> None:
    cfg = load_config(REPO / "experiments" / "granalign_qvh_minigptv2.yaml",
                      {"limit": N_REAL, "pairing": "granalign"})
    out = tmp_path / "never"
    with pytest.raises(MissingInputs) as err:
        run_config(cfg, out, real_cache, data_root)
    text = str(err.value)
    assert f"missing: variants/hf-causal-lm ({N_REAL} of {N_REAL} queries)" in text
    assert "missing: captions_aware/minigptv2" in text
    assert "nothing was written" in text
    assert not out.exists()


def test_real_cq_with_qwen_reports_missing_captions(real_cache: Cache, data_root: Path, capsys) -> None:
    rc = main(["run", str(REPO / "experiments" / "granalign_qvh.yaml"), "--set", "pairing=q-Cq",
               "--limit", str(N_REAL), "--cache", str(real_cache.root), "--data-root", str(data_root)])
    assert rc == 3
    err = capsys.readouterr().err
    assert "missing: captions_aware/qwen2.5-vl" in err
    assert "missing: captions_agnostic/qwen2.5-vl" in err  # Cq falls back to Ca


def test_embeddings_missing_is_reported(tmp_path: Path, data_root: Path) -> None:
    from harness.cache.importers import import_captions

    cache = Cache(tmp_path / "c")
    ds = load_dataset("qvhighlights:val", data_root).subset(3)
    import_captions(cache, ds, "minigptv2", root=data_root, progress=False)
    cfg = ExperimentConfig(captions="minigptv2", pairing="q-Ca", limit=3)
    with pytest.raises(MissingInputs, match="missing: embeddings/sentence-transformers/all-MiniLM-L6-v2"):
        InputPool(cache, data_root).get(cfg)
