"""The paper-table specs under ablations/ and their rendering (harness/tables.py).

The transcription tests check the YAML numbers against the paper text itself (every row's
numbers must come, in order, from one line of one of the paper's tables) and against the
claims the text makes about them (gains over Moment-GPT, rows that equal the main result),
so that a mistyped digit fails here rather than in a results table.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from harness.config.table import (
    TableError,
    TableSpec,
    find_ablations_dir,
    list_tables,
    load_table,
    row_config,
)
from harness.core.results import Failed, Missing
from harness.tables.render import render_all, render_csv, render_markdown

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "paper" / "granalign.txt"
ALL_IDS = ["1", "2", "3", "4", "5", "6", "13", "C1", "C2", "C3", "C4", "C5", "C6"]
NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")

# paper rows per table (Table 1: 14 methods x {test, val}; Table 2: 12 x {Charades, ANet})
PAPER_ROWS = {"1": 28, "2": 24, "3": 10, "4": 5, "5": 6, "6": 4, "13": 5,
              "C1": 5, "C2": 5, "C3": 4, "C4": 5, "C5": 4, "C6": 4}  # fmt: skip
TABLE3_PAIRINGS = ["q-Ca", "q-Cq", "qs-Ca", "qs-Cq", "qd-Ca", "qd-Cq",
                   "qs-Ca+qd-Ca", "qs-Cq+qd-Ca", "granalign", "qs-Cq+qd-Cq"]  # fmt: skip
MAIN_QVH = {"R1@0.5": 61.94, "R1@0.7": 41.81, "mAP@0.5": 59.63, "mAP@avg": 39.12}
MAIN_CHARADES = {"R1@0.3": 59.1, "R1@0.5": 39.6, "mIoU": 38.0}


@pytest.fixture(scope="module")
def tables() -> dict[str, TableSpec]:
    return {t: load_table(t) for t in list_tables(REPO / "ablations")}


# -- the specs --------------------------------------------------------------------------------
def test_every_table_of_the_paper_has_a_spec() -> None:
    assert list_tables(REPO / "ablations") == ALL_IDS


@pytest.mark.parametrize("table_id", ALL_IDS)
def test_spec_loads_with_the_paper_row_count(table_id: str) -> None:
    spec = load_table(REPO / "ablations" / f"table{table_id}.yaml")
    assert spec.id == table_id
    assert len([r for r in spec.rows if not r.extra]) == PAPER_ROWS[table_id]
    for row in spec.rows:
        assert set(row.paper) == (set() if row.extra else set(spec.columns)), row.name


def test_table1_extra_row_is_the_runnable_vtg_gpt(tables: dict[str, TableSpec]) -> None:
    extra = [r for r in tables["1"].rows if r.extra]
    assert [r.name for r in extra] == ["VTG-GPT (harness) [val]"]
    assert extra[0].runnable and extra[0].base == "../experiments/vtg_gpt_qvh.yaml"
    assert extra[0].paper == {}


def test_peer_rows_have_no_config_and_ours_do(tables: dict[str, TableSpec]) -> None:
    t1 = tables["1"]
    assert not t1.row("Moment-GPT [val]").runnable
    assert t1.row("GranAlign (ours) [test]").overrides == {"dataset": "qvhighlights:test"}
    assert t1.row("GranAlign (ours) [val]").overrides == {}
    t2 = tables["2"]
    assert t2.row("GranAlign (ours) [ActivityNet]").base == "../experiments/granalign_anet.yaml"
    assert t2.row("GranAlign (ours) [Charades]").base is None  # the table's base
    assert t2.base == "../experiments/granalign_charades.yaml"
    assert [r.name for r in t2.runnable_rows()] == ["GranAlign (ours) [Charades]", "GranAlign (ours) [ActivityNet]"]


def test_table3_rows_are_methods_order(tables: dict[str, TableSpec]) -> None:
    spec = tables["3"]
    assert [r.overrides["pairing"] for r in spec.rows] == TABLE3_PAIRINGS  # type: ignore[index]
    assert all(r.inferred and r.note for r in spec.rows)
    assert spec.row("q-Ca").paper == {"R1@0.5": 57.94, "R1@0.7": 38.84, "mAP@0.5": 51.64, "mAP@avg": 31.8}
    assert spec.row("qs-Cq+qd-Cq").paper == {"R1@0.5": 61.19, "R1@0.7": 41.35, "mAP@0.5": 59.52, "mAP@avg": 39.01}


def test_table6_is_the_two_pair_rows_with_blip2(tables: dict[str, TableSpec]) -> None:
    spec = tables["6"]
    assert [r.overrides for r in spec.rows] == [  # type: ignore[misc]
        {"captions": "blip2", "pairing": p} for p in TABLE3_PAIRINGS[6:]
    ]
    assert all(r.inferred for r in spec.rows)
    assert list(spec.columns.values()) == [
        "MR-full-mIoU", "MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-full-mAP",
    ]  # fmt: skip
    assert spec.row("(c) qs-Ca+qd-Cq (GranAlign)").paper["mAP@avg"] == 37.80


@pytest.mark.parametrize(
    ("table_id", "key", "values", "dataset"),
    [
        ("C1", "m", [1, 2, 3, 4, 5], "qvhighlights:val"),
        ("C2", "lam", [0.0, 0.1, 0.2, 0.3, 0.4], "qvhighlights:val"),
        ("C3", "K", [5, 10, 20, 30], "charades_sta:test"),
        ("C4", "gap", [0, 2, 4, 6, 8], "charades_sta:test"),
        ("C5", "n", [10, 20, 30, 40], "charades_sta:test"),
        ("C6", "tau", [0.8, 0.85, 0.9, 0.95], "charades_sta:test"),
        ("13", "instruction_pair", [1, 2, 3, 4, 5], "qvhighlights:val"),
    ],
)
def test_sweep_tables_override_one_field(tables: dict[str, TableSpec], table_id: str, key: str,
                                         values: list[float], dataset: str) -> None:  # fmt: skip
    spec = tables[table_id]
    assert [r.overrides for r in spec.rows] == [{key: v} for v in values]
    assert spec.datasets == (dataset,)


def test_highlight_table_uses_verygood_hd_metrics(tables: dict[str, TableSpec]) -> None:
    spec = tables["5"]
    assert spec.columns == {"mAP": "HL-min-VeryGood-mAP", "HIT@1": "HL-min-VeryGood-Hit1"}
    assert spec.row("GranAlign† (qd-Cq)").overrides == {"pairing": "qd-Cq"}
    assert spec.row("GranAlign (ours)").paper == {"mAP": 39.35, "HIT@1": 66.34}
    assert spec.row("QD-DETR").paper == {"mAP": 39.04, "HIT@1": 62.87}


def test_efficiency_table(tables: dict[str, TableSpec]) -> None:
    spec = tables["4"]
    assert spec.kind == "efficiency"
    assert spec.columns["InT (s)"] == "InT_s" and spec.columns["GMU (GB)"] == "GMU_GB"
    assert spec.row("Ours").paper == {"R1@0.5": 61.94, "mAP": 39.12, "InT (s)": 6.2, "GMU (GB)": 22.0}
    assert spec.row("VTimeLLM").info == {"Setup": "FS", "TrC": "4090 40h"}


# -- transcription against the paper ---------------------------------------------------------
def _paper_table_lines() -> list[list[float | None]]:
    if not PAPER.is_file():  # CI has ../shared; a checkout without it fails loudly, as the data tests do
        pytest.fail(f"paper text not found at {PAPER}: the paper-number tests need ../shared/paper")
    out = []
    for line in PAPER.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells: list[float | None] = []
        for cell in line.strip().strip("|").split("|"):
            try:
                cells.append(float(cell.strip().rstrip("%")))
            except ValueError:
                cells.append(None)
        out.append(cells)
    return out


def _is_subsequence(values: list[float], line: list[float | None]) -> bool:
    it = iter(v for v in line if v is not None)
    return all(any(abs(v - x) < 1e-9 for x in it) for v in values)


@pytest.mark.parametrize("table_id", ALL_IDS)
def test_every_paper_number_comes_from_one_line_of_the_paper(table_id: str) -> None:
    lines = _paper_table_lines()
    spec = load_table(table_id, REPO / "ablations")
    for row in [r for r in spec.rows if not r.extra]:
        values = [v for v in row.paper.values() if v is not None]
        assert any(_is_subsequence(values, line) for line in lines), (
            f"table {table_id}, row {row.name!r}: {values} is not, in order, in any table line of the paper"
        )


def test_subsequence_check_can_fail() -> None:
    assert _is_subsequence([57.94, 31.8], [None, 57.94, 38.84, 51.64, 31.8])
    assert not _is_subsequence([31.8, 57.94], [None, 57.94, 38.84, 51.64, 31.8])
    assert not _is_subsequence([57.49], [None, 57.94, 38.84])


def test_main_result_is_the_same_in_every_table(tables: dict[str, TableSpec]) -> None:
    assert tables["1"].row("GranAlign (ours) [val]").paper == MAIN_QVH
    assert tables["3"].row("qs-Ca+qd-Cq (GranAlign)").paper == MAIN_QVH
    assert tables["C1"].row("m=3").paper == MAIN_QVH
    assert tables["C2"].row("lam=0.3").paper == MAIN_QVH
    assert tables["13"].row("pair 1").paper == MAIN_QVH
    t4 = tables["4"].row("Ours").paper
    assert (t4["R1@0.5"], t4["mAP"]) == (MAIN_QVH["R1@0.5"], MAIN_QVH["mAP@avg"])
    charades = tables["2"].row("GranAlign (ours) [Charades]").paper
    assert {k: charades[k] for k in MAIN_CHARADES} == MAIN_CHARADES
    for table_id, row in [("C3", "K=10%"), ("C4", "gap=6"), ("C5", "n=20%"), ("C6", "tau=0.9")]:
        assert tables[table_id].row(row).paper == MAIN_CHARADES, (table_id, row)


def _gains(spec: TableSpec, ours: str, peer: str) -> list[float]:
    a, b = spec.row(ours).paper, spec.row(peer).paper
    return [round(a[c] - b[c], 2) for c in spec.columns]  # type: ignore[operator]


def test_gains_over_moment_gpt_match_the_text(tables: dict[str, TableSpec]) -> None:
    # Sec. 4.1: val "+3.04% to +3.93%", test "+1.6% to +3.84%"
    val = _gains(tables["1"], "GranAlign (ours) [val]", "Moment-GPT [val]")
    assert (min(val), max(val)) == (3.04, 3.93)
    test = _gains(tables["1"], "GranAlign (ours) [test]", "Moment-GPT [test]")
    assert (min(test), max(test)) == (1.6, 3.84)
    # Charades "+1.2% (R1@0.5) and +1.5% (mIoU)"; ActivityNet "+2.9% (R1@0.5) and +2.3% (mIoU)"
    cols = list(tables["2"].columns)
    ch = dict(zip(cols, _gains(tables["2"], "GranAlign (ours) [Charades]", "Moment-GPT [Charades]"), strict=True))
    an = dict(zip(cols, _gains(tables["2"], "GranAlign (ours) [ActivityNet]", "Moment-GPT [ActivityNet]"), strict=True))
    assert (ch["R1@0.5"], ch["mIoU"], an["R1@0.5"], an["mIoU"]) == (1.2, 1.5, 2.9, 2.3)
    # Appendix E: R1@0.5 "from a minimum of 61.26% to a peak of 61.94%"
    r1 = [r.paper["R1@0.5"] for r in tables["13"].rows]
    assert (min(r1), max(r1)) == (61.26, 61.94)


# -- finding specs ----------------------------------------------------------------------------
@pytest.mark.parametrize("ident", ["3", "table3", "Table 3", "TABLE3"])
def test_load_by_id_forms(ident: str) -> None:
    assert load_table(ident, REPO / "ablations").id == "3"


@pytest.mark.parametrize("ident", ["C1", "c1", "C.1", "tableC1"])
def test_load_appendix_ids(ident: str) -> None:
    assert load_table(ident, REPO / "ablations").title.startswith("Sensitivity to the number")


def test_unknown_id_lists_the_tables() -> None:
    with pytest.raises(TableError, match=r"no table '7'.*C6"):
        load_table("7", REPO / "ablations")


def test_ablations_dir_prefers_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ablations").mkdir()
    _write(tmp_path / "ablations" / "table9.yaml", _minimal())
    monkeypatch.chdir(tmp_path)
    assert find_ablations_dir() == tmp_path / "ablations"
    assert list_tables() == ["9"]
    assert load_table("9").path == tmp_path / "ablations" / "table9.yaml"
    monkeypatch.chdir(tmp_path / "ablations")  # no ablations/ here: the package's checkout
    assert find_ablations_dir() == REPO / "ablations"
    assert "C6" in list_tables()


# -- validation -------------------------------------------------------------------------------
def _minimal(**top: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "table": "9",
        "title": "A test table",
        "dataset": "qvhighlights:val",
        "paper_dataset": "QVHighlights val",
        "base": "../experiments/base.yaml",
        "kind": "rows",
        "columns": {"R1@0.5": "MR-full-R1@0.5", "mAP@avg": "MR-full-mAP"},
        "rows": [
            {"name": "ours", "overrides": {"m": 3}, "paper": {"R1@0.5": 61.94, "mAP@avg": 39.12}},
            {"name": "peer", "peer": True, "paper": {"R1@0.5": 58.9, "mAP@avg": None}},
        ],
    }
    spec.update(top)
    return spec


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _with_row(change: dict[str, Any], index: int = 0) -> dict[str, Any]:
    spec = _minimal()
    spec["rows"][index] = {**spec["rows"][index], **change}
    return spec


def test_minimal_spec_is_valid(tmp_path: Path) -> None:
    spec = load_table(_write(tmp_path / "ablations" / "table9.yaml", _minimal()))
    assert [r.name for r in spec.rows] == ["ours", "peer"]
    assert spec.row("ours").runnable and not spec.row("peer").runnable
    assert spec.row("peer").paper == {"R1@0.5": 58.9, "mAP@avg": None}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_minimal(colour="red"), ["unknown key(s) colour"]),
        (_with_row({"overides": {"m": 2}}), ["row 'ours'", "overides"]),
        (_with_row({"overrides": {"lamda": 0.2}}), ["row 'ours'", "lamda", "not ExperimentConfig fields"]),
        (_with_row({"overrides": {"m": "three"}}), ["row 'ours'", "'m'"]),
        (_with_row({"overrides": {"m": 9}}), ["row 'ours'", "key 'm' = 9: expected 1 <= m <= 5"]),
        (_with_row({"overrides": {"dataset": "charades_sta:test"}}), ["row 'ours'", "charades_sta:test"]),
        (_with_row({"paper": {"R1@0.5": 61.94, "mAP@avg": 39.12, "R1@0.9": 1.0}}), ["row 'ours'", "R1@0.9"]),
        (_with_row({"paper": {"R1@0.5": 61.94}}), ["row 'ours'", "no paper value", "mAP@avg"]),
        (_with_row({"paper": {"R1@0.5": "61.94", "mAP@avg": 1.0}}), ["row 'ours'", "number or null"]),
        (_with_row({"extra": True}), ["row 'ours'", "extra"]),
        (_with_row({"inferred": True}), ["row 'ours'", "note"]),
        (_with_row({"name": "peer"}), ["row 'peer' (#2)", "duplicate row name"]),
        (_with_row({"name": ""}), ["row #1", "'name'"]),
        (_with_row({"info": {"MLLM": "✓"}}), ["row 'ours'", "MLLM"]),
        (_minimal(columns={"R1@0.5": "MR-full-R1@05"}), ["MR-full-R1@05", "unknown metric key"]),
        (_minimal(dataset="qvhighlights:train"), ["unknown dataset 'qvhighlights:train'"]),
        (_minimal(kind="figure"), ["kind 'figure'"]),
        (_minimal(table="10"), ["does not match the file name"]),
    ],
)
def test_validation_errors_name_the_file_and_row(tmp_path: Path, spec: dict[str, Any], expected: list[str]) -> None:
    path = _write(tmp_path / "ablations" / "table9.yaml", spec)
    with pytest.raises(TableError) as err:
        load_table(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, (part, message)


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "table9.yaml"
    text = yaml.safe_dump(_minimal(), sort_keys=False)
    path.write_text(text.replace("R1@0.5: 61.94", "R1@0.5: 61.94\n    R1@0.5: 16.94", 1), encoding="utf-8")
    with pytest.raises(TableError, match="duplicate key 'R1@0.5'"):
        load_table(path)


def test_overrides_are_checked_against_an_existing_base(tmp_path: Path) -> None:
    _write(tmp_path / "experiments" / "base.yaml", {"dataset": "charades_sta:test"})
    path = _write(tmp_path / "ablations" / "table9.yaml", _minimal())
    with pytest.raises(TableError, match=r"row 'ours'.*runs on 'charades_sta:test'"):
        load_table(path)
    _write(tmp_path / "experiments" / "base.yaml", {"dataset": "qvhighlights:val", "bogus": 1})
    with pytest.raises(TableError, match=r"row 'ours'.*bogus"):
        load_table(path)


def test_a_bad_table_spec_is_a_one_line_error_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "ablations" / "table9.yaml", _minimal(kind="figure"))
    assert main(["table", str(path), "--demo", "--storage", f"sqlite:///{tmp_path}/o.db",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("granalign: error: ") and str(path) in err and "kind 'figure'" in err
    assert len(err.splitlines()) == 1, "a traceback reached the user"
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "m.db").exists()


# -- run configs ------------------------------------------------------------------------------
def _tables_in(root: Path, *ids: str) -> Path:
    """Copies of the repository's table files in `root/ablations`: their `base:` paths
    (relative to the table file) then point into `root/experiments`."""
    (root / "ablations").mkdir(parents=True, exist_ok=True)
    for i in ids:
        (root / "ablations" / f"table{i}.yaml").write_text((REPO / "ablations" / f"table{i}.yaml").read_text())
    return root / "ablations"


def test_row_config_applies_overrides_to_the_base(tmp_path: Path) -> None:
    _write(tmp_path / "experiments" / "granalign_qvh.yaml", {"name": "granalign_qvh", "m": 3, "lam": 0.3})
    folder = _tables_in(tmp_path, "3", "1")
    spec = load_table("3", folder)
    cfg = row_config(spec, "q-Ca")
    assert (cfg.pairing, cfg.m, cfg.lam) == ("q-Ca", 3, 0.3)
    assert cfg.name == "table3/q-Ca"
    assert dict(cfg.tags) == {"table": "3", "row": "q-Ca"}
    # name and tags are not in the hash: the GranAlign row is the base computation itself
    base = row_config(spec, "qs-Ca+qd-Cq (GranAlign)")
    assert base.hash() == row_config(load_table("1", folder), "GranAlign (ours) [val]").hash()
    assert base.hash() != cfg.hash()


def test_row_config_refuses_a_peer_without_config() -> None:
    spec = load_table("5", REPO / "ablations")
    with pytest.raises(TableError, match="QD-DETR"):
        row_config(spec, "QD-DETR")


def test_row_config_uses_the_rows_own_base(tmp_path: Path) -> None:
    for name in ("granalign_charades", "granalign_anet"):
        (tmp_path / "experiments").mkdir(exist_ok=True)
        (tmp_path / "experiments" / f"{name}.yaml").write_text((REPO / "experiments" / f"{name}.yaml").read_text())
    (tmp_path / "experiments" / "granalign_qvh.yaml").write_text((REPO / "experiments" / "granalign_qvh.yaml").read_text())
    _write(tmp_path / "experiments" / "granalign_anet.yaml", {"dataset": "activitynet:val_1", "m": 2})
    cfg = row_config(load_table("2", _tables_in(tmp_path, "2")), "GranAlign (ours) [ActivityNet]")
    assert cfg.dataset == "activitynet:val_1" and cfg.m == 2


# -- rendering --------------------------------------------------------------------------------
REASON = "missing: captions_aware/qwen2.5-vl"
COMPUTED = {"MR-full-R1@0.5": 59.0, "MR-full-R1@0.7": 38.84, "MR-full-mAP@0.5": 51.6449, "MR-full-mAP": 30.1}


def _md_table(md: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and {row name: cells} of the one Markdown table in `md`."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    header, body = split[0], split[2:]
    return header, {cells[0].removesuffix(" \\*"): cells for cells in body}


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    spec = load_table("3", REPO / "ablations")
    return render_all(spec, {"q-Ca": COMPUTED, "q-Cq": Missing.stage("captions_aware", "qwen2.5-vl")})


def test_markdown_shows_ours_paper_and_signed_difference(rendered: dict[str, str]) -> None:
    header, rows = _md_table(rendered["md"])
    assert header[:4] == ["Row", "R1@0.5 ours", "R1@0.5 paper", "R1@0.5 Δ"]
    assert rows["q-Ca"][1:4] == ["59.00", "57.94", "+1.06"]
    assert rows["q-Ca"][4:7] == ["38.84", "38.84", "+0.00"]  # equal: no "-0.00"
    assert rows["q-Ca"][7:10] == ["51.64", "51.64", "+0.00"]  # rounded before the difference
    assert rows["q-Ca"][10:13] == ["30.10", "31.80", "-1.70"]
    assert "Table 3: Pairing of query and caption granularities" in rendered["md"]
    assert "qvhighlights:val" in rendered["md"] and "QVHighlights val" in rendered["md"]


def test_markdown_missing_row_has_reason_and_paper_numbers_but_no_number_of_ours(rendered: dict[str, str]) -> None:
    header, rows = _md_table(rendered["md"])
    missing = rows["q-Cq"]
    ours = [missing[i] for i, h in enumerate(header) if h.endswith(" ours")]
    diffs = [missing[i] for i, h in enumerate(header) if h.endswith(" Δ")]
    paper = [missing[i] for i, h in enumerate(header) if h.endswith(" paper")]
    assert len(ours) == 4 and all(c == REASON for c in ours)
    assert not any(NUMBER.match(c) for c in ours + diffs)
    assert paper == ["58.19", "39.03", "52.12", "32.13"]
    assert rows["qs-Ca"][1] == "not run"  # runnable, no result yet


def test_markdown_footnote_names_inferred_rows(rendered: dict[str, str]) -> None:
    foot = rendered["md"].split("\n\n")[-1]
    assert "Every row label of this table was lost" in foot
    assert "Inferred row labels" in foot and "qs-Cq+qd-Ca (label lost: two-pair row (b)" in foot


def test_csv_parses_and_keeps_reasons_out_of_numbers(rendered: dict[str, str]) -> None:
    records = list(csv.DictReader(io.StringIO(rendered["csv"])))
    assert len(records) == 10
    by_row = {r["row"]: r for r in records}
    assert (by_row["q-Ca"]["R1@0.5 ours"], by_row["q-Ca"]["R1@0.5 paper"], by_row["q-Ca"]["R1@0.5 diff"]) == (
        "59.00", "57.94", "+1.06",
    )  # fmt: skip
    assert by_row["q-Ca"]["status"] == "ok" and by_row["q-Cq"]["status"] == "missing"
    assert by_row["q-Cq"]["mAP@avg ours"] == REASON and by_row["q-Cq"]["mAP@avg diff"] == ""
    assert by_row["q-Cq"]["inferred"] == "true"


def test_latex_is_a_tabular_with_escaped_cells(rendered: dict[str, str]) -> None:
    tex = rendered["tex"]
    assert r"\begin{tabular}{l|rrr|rrr|rrr|rrr}" in tex and r"\end{tabular}" in tex
    assert r"\textit{missing: captions\_aware/qwen2.5-vl}" in tex
    assert "59.00 & 57.94 & +1.06" in tex
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\")]
    assert len(body) == 2 + 10
    assert {ln.count(" & ") for ln in body[1:]} == {12}  # every row as wide as the header


def test_peer_and_extra_rows() -> None:
    spec = load_table("1", REPO / "ablations")
    md = render_markdown(spec, {"GranAlign (ours) [test]": Missing("dataset qvhighlights:test"),
                                "GranAlign (ours) [val]": {"MR-full-R1@0.5": 60.0}})  # fmt: skip
    header, rows = _md_table(md)
    assert header[:4] == ["Row", "MLLM", "Setting", "Dataset"]
    assert rows["Moment-GPT [val]"][4:7] == ["not run (peer)", "58.90", ""]
    assert rows["CPL [test]"][13:16] == ["not run (peer)", "–", ""]  # mAP@avg: "–" in the paper
    assert rows["GranAlign (ours) [test]"][4] == "missing: dataset qvhighlights:test"
    assert rows["GranAlign (ours) [val]"][4:10] == ["60.00", "61.94", "-1.94", "n/a", "41.81", ""]
    assert rows["VTG-GPT (harness) [val]"][4:7] == ["not run", "not in paper", ""]


def test_render_rejects_results_for_unknown_rows() -> None:
    spec = load_table("3", REPO / "ablations")
    with pytest.raises(TableError, match="'q-Cx'"):
        render_csv(spec, {"q-Cx": COMPUTED})


def test_every_rendering_shows_each_row_in_its_state() -> None:
    spec = load_table("C3", REPO / "ablations")  # rows K=5, 10, 20, 30 on Charades-STA
    names = [r.name for r in spec.rows]
    results = {names[0]: {"R1@0.3": 70.125, "R1@0.5": 50.0, "mIoU": 44.444},
               names[1]: Missing("captions_aware/qwen2.5-vl"), names[2]: Failed("ValueError: boom")}
    out = render_all(spec, results)
    assert set(out) == {"md", "csv", "tex"}
    rows = {r["row"]: r for r in csv.DictReader(io.StringIO(out["csv"]))}
    assert [rows[n]["status"] for n in names] == ["ok", "missing", "failed", "not run"]
    assert rows[names[0]]["R1@0.3 ours"] == "70.12" and rows[names[0]]["mIoU ours"] == "44.44"
    assert rows[names[1]]["mIoU ours"] == "missing: captions_aware/qwen2.5-vl"
    assert rows[names[2]]["R1@0.5 ours"] == "failed: ValueError: boom"
    md = {line.split("|")[1].strip(): line for line in out["md"].splitlines() if line.startswith("| ")}
    assert "| 70.12 |" in md[names[0]] and "missing: captions_aware/qwen2.5-vl" in md[names[1]]
    assert "failed: ValueError: boom" in md[names[2]] and "| not run |" in md[names[3]]
    tex = [line for line in out["tex"].splitlines() if " & " in line][2:]  # after the 2 header lines
    assert len(tex) == len(names) and tex[0].startswith(r"K=5\%")
    assert "70.12" in tex[0] and r"\textit{missing: captions\_aware/qwen2.5-vl}" in tex[1]
    assert r"\textit{failed: ValueError: boom}" in tex[2] and r"\textit{not run}" in tex[3]


def test_an_explicit_ablations_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="not found"):
        list_tables(tmp_path / "nowhere")
