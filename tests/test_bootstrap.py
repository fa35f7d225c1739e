"""Bootstrap intervals and paired tests (harness/eval/bootstrap.py) on real prediction files.

The per-query values an evaluator hands out must average back to the metric it prints (else
the interval would be about another number); identical files differ by exactly 0 and are not
significant; a file whose windows are all moved by 20 s is significantly worse on every
moment-retrieval metric; the interval of a hit rate is as wide as binomial theory says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.config.table import load_table
from harness.core.results import Outcome
from harness.data import load_dataset
from harness.eval.bootstrap import (
    compare,
    intervals,
    load_per_query,
    resamples,
    save_per_query,
)
from harness.eval.predictions import load_predictions, write_predictions
from harness.eval.protocols import PerQuery, protocol_of
from harness.tables.render import render_all
from harness.tables.stats import NOT_SIGNIFICANT, Uncertainty

REF = Path("qvhighlights") / "eval_reference" / "sample_val_preds.jsonl"


@pytest.fixture(scope="module")
def qvh(data_root: Path) -> tuple[list, list[dict], dict, PerQuery]:
    """(GT queries, the official sample predictions, their metrics, their per-query values)."""
    dataset = load_dataset("qvhighlights:val", data_root)
    preds = load_predictions(data_root / REF)
    pq: PerQuery = {}
    metrics = protocol_of("qvhighlights:val").evaluate(dataset.queries, preds, per_query=pq)
    return list(dataset.queries), preds, metrics, pq


def shifted(preds: list[dict], seconds: float) -> list[dict]:
    out = []
    for p in preds:
        row = dict(p)
        row["pred_relevant_windows"] = [[s + seconds, e + seconds, c] for s, e, c in p["pred_relevant_windows"]]
        out.append(row)
    return out


def test_per_query_values_average_to_every_brief_metric(qvh: tuple) -> None:
    _, _, metrics, pq = qvh
    brief = metrics["brief"]
    assert {"MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mAP@0.5",
            "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "MR-long-mAP"} <= set(pq)
    for key, iv in intervals(pq, n_resamples=50).items():
        assert key in brief, key
        assert iv.value == pytest.approx(brief[key], abs=0.006), key  # brief values are rounded
        assert iv.low <= iv.value <= iv.high, key
    # the official published numbers of the sample file, from the values we resample
    assert intervals(pq, 10)["MR-full-mAP"].value == pytest.approx(32.20, abs=0.006)
    assert intervals(pq, 10)["HL-min-VeryGood-Hit1"].value == pytest.approx(55.55, abs=0.006)


def test_hit_rate_interval_is_as_wide_as_binomial_theory(qvh: tuple) -> None:
    _, _, metrics, pq = qvh
    values, mask = pq["MR-full-R1@0.5"]
    p, n = values.mean(), len(values)
    expected = 2 * 1.96 * 100 * np.sqrt(p * (1 - p) / n)
    iv = intervals({"R1": (values, mask)}, n_resamples=2000)["R1"]
    assert iv.high - iv.low == pytest.approx(expected, rel=0.12)


def test_identical_files_differ_by_zero_and_are_not_significant(qvh: tuple) -> None:
    _, _, _, pq = qvh
    for key, c in compare(pq, pq, n_resamples=200).items():
        assert c.diff == 0.0 and c.low == 0.0 and c.high == 0.0, key
        assert c.p == 1.0 and not c.significant, key


def test_a_20_second_shift_is_significantly_worse(qvh: tuple) -> None:
    gt, preds, _, pq = qvh
    worse: PerQuery = {}
    protocol_of("qvhighlights:val").evaluate(gt, shifted(preds, 20.0), per_query=worse)
    result = compare(pq, worse, n_resamples=500)
    for key in ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mAP@0.5"):
        c = result[key]
        assert c.diff < -5 and c.high < 0 and c.significant, (key, c)
        assert c.p_text() == "< 0.002"
    # saliency did not move: the highlight metrics are unchanged
    assert result["HL-min-VeryGood-mAP"].diff == 0.0 and not result["HL-min-VeryGood-mAP"].significant


def test_a_small_real_difference_is_not_always_significant() -> None:
    """Two systems that differ on 3 of 1000 queries: the test must not call that significant."""
    a = np.zeros(1000)
    a[:500] = 1.0
    b = a.copy()
    b[500:503] = 1.0
    every = np.ones(1000, dtype=bool)
    c = compare({"R1": (a, every)}, {"R1": (b, every)}, n_resamples=1000)["R1"]
    assert c.diff == pytest.approx(0.3)
    assert not c.significant and c.p > 0.05


def test_resampling_is_reproducible_by_seed() -> None:
    assert np.array_equal(resamples(100, 10, seed=3), resamples(100, 10, seed=3))
    assert not np.array_equal(resamples(100, 10, seed=3), resamples(100, 10, seed=4))


def test_paired_comparison_needs_the_same_queries() -> None:
    every = np.ones(3, dtype=bool)
    with pytest.raises(ValueError, match="same queries: 3 vs 2"):
        compare({"R1": (np.ones(3), every)}, {"R1": (np.ones(2), np.ones(2, dtype=bool))})


def test_per_query_round_trip(tmp_path: Path, qvh: tuple) -> None:
    _, _, _, pq = qvh
    path = tmp_path / "sub" / "row.npz"
    save_per_query(path, pq)
    back = load_per_query(path)
    assert set(back) == set(pq)
    for key, (values, mask) in pq.items():
        assert np.array_equal(back[key][0], values) and np.array_equal(back[key][1], mask)
        assert back[key][1].dtype == bool
    assert not list(path.parent.glob("*.tmp*"))


def test_top1_per_query_values() -> None:
    from harness.core.query import Query

    gt = [Query(i, f"v{i}", "q", 30.0, ((0.0, 10.0),), None) for i in range(2)]
    preds = [{"qid": 0, "pred_relevant_windows": [[0, 10, 1]]}, {"qid": 1, "pred_relevant_windows": [[5, 10, 1]]}]
    pq: PerQuery = {}
    protocol_of("charades_sta:test").evaluate(gt, preds, per_query=pq)
    assert pq["R1@0.5"][0].tolist() == [1.0, 1.0] and pq["R1@0.7"][0].tolist() == [1.0, 0.0]
    assert pq["mIoU"][0].tolist() == [1.0, 0.5]


# --------------------------------------------------------------------------- command line


def test_cli_compare_and_eval_ci(tmp_path: Path, data_root: Path, qvh: tuple,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, preds, _, _ = qvh
    a = data_root / REF
    b = tmp_path / "shifted.jsonl"
    write_predictions(b, shifted(preds, 20.0))
    common = ["--dataset", "qvhighlights:val", "--data-root", str(data_root), "--resamples", "200"]
    assert main(["compare", str(a), str(a), *common]) == 0
    same = capsys.readouterr().out
    assert "not significant" in same and "+0.00" in same
    assert main(["compare", str(a), str(b), *common, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["MR-full-R1@0.5"]["p"] < 0.005 and out["MR-full-R1@0.5"]["diff"] < 0
    assert main(["eval", "--pred", str(a), "--ci", *common]) == 0
    text = capsys.readouterr().out
    assert "95 % bootstrap intervals (200 resamples" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("MR-full-mAP ") and "[" in x)
    lo, hi = (float(v) for v in line.split("[")[1].split("]")[0].split(","))
    assert lo < 32.20 < hi


@pytest.mark.parametrize("flag", ["--resamples=0", "--resamples=-3", "--seed=-1", "--resamples=many"])
def test_cli_rejects_bad_counts(flag: str, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "--pred", str(data_root / REF), "--dataset", "qvhighlights:val", "--ci", flag])
    assert e.value.code == 2
    assert "expected a whole number" in capsys.readouterr().err


# --------------------------------------------------------------------------- tables


def test_table_renders_intervals_and_marks_rows_not_significant() -> None:
    spec = load_table("C1")
    assert spec.reference == "m=3"
    keys = list(spec.columns.values())
    results: dict[str, Outcome] = {r.name: {k: 30.0 + i for k in keys} for i, r in enumerate(spec.rows)}
    cells = {}
    for i, r in enumerate(spec.rows):
        p = None if r.name == "m=3" else (0.5 if r.name == "m=2" else 0.001)
        cells[r.name] = {k: (29.0 + i, 31.0 + i, p) for k in keys}
    unc = Uncertainty("m=3", cells, 1000, 0)
    out = render_all(spec, results, unc)
    md = out["md"]
    m2 = next(x for x in md.splitlines() if x.startswith("| m=2 "))
    m1 = next(x for x in md.splitlines() if x.startswith("| m=1 "))
    assert f"31.00 [30.00, 32.00] {NOT_SIGNIFICANT}" in m2
    assert "30.00 [29.00, 31.00] |" in m1 and NOT_SIGNIFICANT not in m1
    # a cell the run did not report gets no interval
    partial = {**results, "m=1": {}}
    assert "| m=1 | n/a | 58.21 |" in render_all(spec, partial, unc)["md"]
    assert "not significantly different from row m=3" in md
    header = out["csv"].splitlines()[0]
    assert "R1@0.5 ci low" in header and "R1@0.5 p vs m=3" in header
    assert r"{\scriptsize [30.00, 32.00]}$^{ns}$" in out["tex"]
