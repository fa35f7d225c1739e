"""The paper's tables as data: load the YAML specs under `ablations/`, render ours vs. paper.

Each table of the paper is one declarative file (`ablations/table3.yaml`, ...; the format is
in `ablations/README.md`): a base run config, one row per line of the paper's table with the
config overrides that reproduce it, and the paper's numbers transcribed from the text. Why
data and not code: the transcription can be reviewed line by line against the paper, a new
ablation is a new file, and a typo (a metric key, a config field, a column the paper never
had) fails when the file is loaded, with the file and the row, not after hours of runs.

Rendering is pure: given a spec and our results per row (a metrics dict, or a `Missing` /
`Failed` saying why there is none), it returns Markdown, CSV and LaTeX strings that put
ours, the paper's and the difference side by side. A row we cannot compute shows the
paper's numbers and the reason, never a number of ours. Logging the strings (MLflow) is
another module's job.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.config import ExperimentConfig, from_dict, load_config
from harness.core.errors import ConfigError
from harness.core.registries import DATASETS
from harness.core.results import Failed, Missing, Outcome, SameAs
from harness.core.yaml_io import load_yaml
from harness.eval.protocols import protocol_of

__all__ = [
    "EFFICIENCY_KEYS",
    "RowSpec",
    "TableError",
    "TableSpec",
    "find_ablations_dir",
    "metric_keys",
    "list_tables",
    "load_table",
    "render_all",
    "render_csv",
    "render_latex",
    "render_markdown",
    "row_config",
]

# A column names a metric key of the table's datasets' protocol, or (in `kind: efficiency`
# tables, Table 4) one of the keys that the cache-timing reader emits. A column naming any
# other key is a typo that would otherwise render as "n/a" forever.
EFFICIENCY_KEYS = frozenset({"InT_s", "GMU_GB"})  # seconds per query; peak GPU memory, GB

KINDS = ("rows", "efficiency")
_TABLE_KEYS = {"table", "title", "dataset", "paper_dataset", "base", "kind", "info", "columns", "note", "rows",
               "reference"}
_TABLE_REQUIRED = ("table", "title", "dataset", "paper_dataset", "base", "kind", "columns", "rows")
_ROW_KEYS = {"name", "overrides", "paper", "peer", "extra", "inferred", "base", "note", "info", "paper_dataset"}
_CONFIG_FIELDS = frozenset(f.name for f in fields(ExperimentConfig))


class TableError(ConfigError):
    """A table spec that does not fit the format; the message names the file and the row."""


# -- the spec ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowSpec:
    """One line of a paper table.

    `overrides` is None for a row that has no run config (a peer method this harness cannot
    run): such a row shows the paper's numbers only. `paper` maps display column -> the
    paper's number, None where the paper prints "–". `extra` marks a row that is not in the
    paper's table (ours, for reference); `inferred` one whose label the text lost and this
    project reconstructed (`note` says from what).
    """

    name: str
    paper: Mapping[str, float | None] = field(default_factory=dict)
    overrides: Mapping[str, Any] | None = None
    peer: bool = False
    extra: bool = False
    inferred: bool = False
    base: str | None = None
    note: str | None = None
    info: Mapping[str, str | None] = field(default_factory=dict)
    paper_dataset: str = ""

    @property
    def runnable(self) -> bool:
        """True when the row has a run config (`row_config` can build it)."""
        return self.overrides is not None


@dataclass(frozen=True)
class TableSpec:
    """A parsed, validated `ablations/table*.yaml` (see ablations/README.md)."""

    id: str
    title: str
    datasets: tuple[str, ...]
    paper_dataset: str
    base: str
    kind: str
    columns: Mapping[str, str]  # display name -> metric key, in display order
    rows: tuple[RowSpec, ...]
    info: tuple[str, ...] = ()
    note: str | None = None
    path: Path | None = None
    # rows computed under a declared substitution (their numbers are marked), and what stood in
    substituted: frozenset[str] = frozenset()
    substitutions: tuple[tuple[str, str], ...] = ()  # (substitution, why), e.g. ("Cq=Ca", "...")
    reference: str | None = None  # the row others are tested against (the paper's choice)

    @property
    def repo_root(self) -> Path:
        """The folder that `base` paths are relative to: the parent of `ablations/`."""
        if self.path is None:
            return Path.cwd()
        return self.path.resolve().parent.parent

    def row(self, name: str) -> RowSpec:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"table {self.id}: no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def runnable_rows(self) -> tuple[RowSpec, ...]:
        """The rows a driver has to run (every row with a config)."""
        return tuple(r for r in self.rows if r.runnable)

    def paper_rows(self) -> tuple[RowSpec, ...]:
        """The rows that are lines of the paper's table (not `extra`)."""
        return tuple(r for r in self.rows if not r.extra)

    def inferred_rows(self) -> tuple[RowSpec, ...]:
        return tuple(r for r in self.rows if r.inferred)


# -- finding and loading ----------------------------------------------------------------------
def find_ablations_dir(start: str | os.PathLike[str] | None = None) -> Path:
    """`ablations/` under the working directory (a checkout), else next to the package.

    The working directory comes first so that a run from a checkout sees its own (possibly
    edited) specs even when the package is installed elsewhere.
    """
    if start is not None:  # an explicit folder must exist: no silent fallback
        if not Path(start).is_dir():
            raise TableError(f"ablations folder {start} not found")
        return Path(start)
    candidates = [Path.cwd() / "ablations", Path(__file__).resolve().parents[2] / "ablations"]
    for c in candidates:
        if c.is_dir():
            return c
    raise TableError(f"no ablations/ folder found (looked in {', '.join(str(c) for c in candidates)})")


def _normalise_id(text: str) -> str:
    """'table3', 'Table 3', '3' -> '3'; 'C.1', 'c1', 'tableC1' -> 'C1'."""
    s = re.sub(r"^table[\s_-]*", "", text.strip(), flags=re.IGNORECASE)
    return s.replace(".", "").replace(" ", "").upper()


def _id_sort_key(table_id: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"([A-Z]*)(\d+)", table_id)
    if not m:
        return (2, table_id, 0)
    return (0 if not m.group(1) else 1, m.group(1), int(m.group(2)))


def list_tables(ablations_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The table ids under `ablations/` ('1' ... '6', '13', 'C1' ... 'C6'), numbers first."""
    folder = find_ablations_dir(ablations_dir)
    ids = [p.stem[len("table"):] for p in folder.glob("table*.yaml")]
    return sorted(ids, key=_id_sort_key)


def load_table(path_or_id: str | os.PathLike[str], ablations_dir: str | os.PathLike[str] | None = None) -> TableSpec:
    """Load and validate one table spec, by id ("3", "table3", "C1") or by file path."""
    text = os.fspath(path_or_id)
    if isinstance(path_or_id, os.PathLike) or text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise TableError(f"table spec {path} not found")
    else:
        folder = find_ablations_dir(ablations_dir)
        table_id = _normalise_id(text)
        path = folder / f"table{table_id}.yaml"
        if not path.is_file():
            raise TableError(
                f"no table {text!r} ({path} not found); tables: {', '.join(list_tables(folder))}"
            )
    return _parse_table(_read_yaml(path), path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path)
    except ConfigError as e:
        raise TableError(str(e)) from None
    if not isinstance(data, dict):
        raise TableError(f"{path}: expected a mapping with the keys {', '.join(_TABLE_REQUIRED)}")
    return data


# -- validation -------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def metric_keys(datasets: tuple[str, ...], kind: str = "rows") -> frozenset[str]:
    """The keys a column of a table on `datasets` may name: their protocols' metric keys
    (and the efficiency keys for `kind: efficiency`)."""
    keys = frozenset(k for d in datasets for k in protocol_of(d).metric_keys)
    return keys | EFFICIENCY_KEYS if kind == "efficiency" else keys


def _parse_table(data: Mapping[str, Any], path: Path) -> TableSpec:
    where = str(path)
    unknown = sorted(set(data) - _TABLE_KEYS)
    if unknown:
        raise TableError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_TABLE_KEYS))}")
    absent = [k for k in _TABLE_REQUIRED if k not in data]
    if absent:
        raise TableError(f"{where}: missing key(s) {', '.join(absent)}")

    if not isinstance(data["table"], str | int) or isinstance(data["table"], bool):
        raise TableError(f"{where}: 'table' should be the table id, e.g. \"3\" or \"C1\"")
    table_id = _normalise_id(str(data["table"]))
    stem = re.fullmatch(r"table(.+)", path.stem, flags=re.IGNORECASE)
    if stem and _normalise_id(stem.group(1)) != table_id:
        raise TableError(f"{where}: 'table: {data['table']}' does not match the file name {path.name}")
    for key in ("title", "paper_dataset", "base"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise TableError(f"{where}: {key!r} should be a non-empty string")
    note = data.get("note")
    if note is not None and not isinstance(note, str):
        raise TableError(f"{where}: 'note' should be a string")
    kind = data["kind"]
    if kind not in KINDS:
        raise TableError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")

    ds = data["dataset"]
    datasets = (ds,) if isinstance(ds, str) else tuple(ds) if isinstance(ds, list) else None
    if not datasets or not all(isinstance(d, str) for d in datasets):
        raise TableError(f"{where}: 'dataset' should be a dataset name or a list of them")
    for d in datasets:
        if d not in DATASETS:
            raise TableError(f"{where}: unknown dataset {d!r}; registered: {', '.join(DATASETS.names())}")
    valid_keys = metric_keys(datasets, kind)

    info = data.get("info", [])
    if not isinstance(info, list) or not all(isinstance(i, str) for i in info):
        raise TableError(f"{where}: 'info' should be a list of descriptive column names")

    columns = data["columns"]
    if not isinstance(columns, dict) or not columns:
        raise TableError(f"{where}: 'columns' should map display names to metric keys")
    for display, key in columns.items():
        if not isinstance(display, str) or not isinstance(key, str):
            raise TableError(f"{where}: column {display!r}: display name and metric key must be strings")
        if key not in valid_keys:
            raise TableError(
                f"{where}: column {display!r} names unknown metric key {key!r}; known: {', '.join(sorted(valid_keys))}"
            )

    rows_data = data["rows"]
    if not isinstance(rows_data, list) or not rows_data:
        raise TableError(f"{where}: 'rows' should be a non-empty list")
    spec_stub = TableSpec(
        id=table_id, title=data["title"], datasets=datasets, paper_dataset=data["paper_dataset"],
        base=data["base"], kind=kind, columns=dict(columns), rows=(), info=tuple(info), note=note, path=path,
    )  # fmt: skip
    rows: list[RowSpec] = []
    names: set[str] = set()
    for i, raw in enumerate(rows_data):
        row = _parse_row(raw, i, spec_stub)
        if row.name in names:
            raise TableError(f"{where}, row {row.name!r} (#{i + 1}): duplicate row name")
        names.add(row.name)
        rows.append(row)
    reference = data.get("reference")
    runnable = [r.name for r in rows if r.overrides is not None]
    if reference is not None and reference not in runnable:
        raise TableError(f"{where}: reference {reference!r} is not a row we compute; rows with a config: "
                         f"{', '.join(runnable)}")
    return replace(spec_stub, rows=tuple(rows), reference=reference)


def _parse_row(raw: Any, index: int, spec: TableSpec) -> RowSpec:
    label = raw.get("name") if isinstance(raw, dict) else None
    where = f"{spec.path}, row {label!r} (#{index + 1})" if label else f"{spec.path}, row #{index + 1}"
    if not isinstance(raw, dict):
        raise TableError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - _ROW_KEYS)
    if unknown:
        raise TableError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_ROW_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TableError(f"{where}: 'name' should be a non-empty string")
    flags = {}
    for key in ("peer", "extra", "inferred"):
        v = raw.get(key, False)
        if not isinstance(v, bool):
            raise TableError(f"{where}: {key!r} should be true or false")
        flags[key] = v
    for key in ("note", "base", "paper_dataset"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise TableError(f"{where}: {key!r} should be a string")
    if flags["inferred"] and not raw.get("note"):
        raise TableError(f"{where}: an inferred row needs a 'note' saying what the label was inferred from")

    # the paper's numbers
    paper_raw = raw.get("paper")
    if flags["extra"]:
        if paper_raw:
            raise TableError(f"{where}: an 'extra' row is not in the paper and cannot have paper numbers")
        paper: dict[str, float | None] = {}
    else:
        if not isinstance(paper_raw, dict):
            raise TableError(f"{where}: 'paper' should map column names to the paper's numbers")
        bad = sorted(set(paper_raw) - set(spec.columns))
        if bad:
            raise TableError(
                f"{where}: paper value(s) for column(s) {', '.join(map(str, bad))} that the table does not have; "
                f"columns: {', '.join(spec.columns)}"
            )
        lacking = [c for c in spec.columns if c not in paper_raw]
        if lacking:
            raise TableError(
                f"{where}: no paper value for column(s) {', '.join(lacking)} (write null for a '–' cell)"
            )
        paper = {}
        for col, v in paper_raw.items():
            if v is not None and not _is_number(v):
                raise TableError(f"{where}: paper value for {col!r} should be a number or null, got {v!r}")
            paper[col] = None if v is None else float(v)

    # descriptive cells
    info_raw = raw.get("info", {}) or {}
    if not isinstance(info_raw, dict):
        raise TableError(f"{where}: 'info' should be a mapping")
    bad = sorted(set(info_raw) - set(spec.info))
    if bad:
        raise TableError(f"{where}: info column(s) {', '.join(bad)} not declared in the table's 'info'")
    info = {str(k): (None if v is None else str(v)) for k, v in info_raw.items()}

    # the run config
    overrides_raw = raw.get("overrides")
    if overrides_raw is not None and not isinstance(overrides_raw, dict):
        raise TableError(f"{where}: 'overrides' should be a mapping of config fields")
    has_config = not flags["peer"] or overrides_raw is not None or raw.get("base") is not None
    overrides = dict(overrides_raw or {}) if has_config else None
    if overrides is not None:
        _check_overrides(overrides, raw.get("base") or spec.base, spec, where)

    return RowSpec(
        name=name, paper=paper, overrides=overrides, peer=flags["peer"], extra=flags["extra"],
        inferred=flags["inferred"], base=raw.get("base"), note=raw.get("note"), info=info,
        paper_dataset=raw.get("paper_dataset") or spec.paper_dataset,
    )  # fmt: skip


def _check_overrides(overrides: Mapping[str, Any], base: str, spec: TableSpec, where: str) -> None:
    """Fail now, naming the row, for what would fail at run time.

    The base file may not exist yet (it is written separately): then the overrides are
    checked on the config defaults (names, types, ranges); when it exists, base + overrides
    must load exactly as `row_config` will load them.
    """
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise TableError(
            f"{where}: override(s) {', '.join(unknown)} are not ExperimentConfig fields; "
            f"valid: {', '.join(sorted(_CONFIG_FIELDS))}"
        )
    base_path = spec.repo_root / base
    try:
        cfg = load_config(base_path, overrides) if base_path.is_file() else from_dict(overrides, where="overrides")
    except ConfigError as e:
        raise TableError(f"{where}: {e}") from None
    if (base_path.is_file() or "dataset" in overrides) and cfg.dataset not in spec.datasets:
        raise TableError(
            f"{where}: the row runs on {cfg.dataset!r}, which is not among the table's datasets "
            f"({', '.join(spec.datasets)})"
        )


def row_config(spec: TableSpec, row: RowSpec | str, repo_root: str | os.PathLike[str] | None = None) -> ExperimentConfig:
    """The run config of one row: its base file (the row's, else the table's) + overrides.

    The config's `name` becomes `table<id>/<row>` and its tags gain `table` and `row`, so
    that a tracked run says which cell it fills; neither is part of the config hash, so a
    row that equals another table's row (Table 3 (c) and Table 1) is still one computation.
    """
    r = spec.row(row) if isinstance(row, str) else row
    if r.overrides is None:
        raise TableError(f"{spec.path}, row {r.name!r}: a peer row with no config cannot be run")
    root = Path(repo_root) if repo_root is not None else spec.repo_root
    cfg = load_config(root / (r.base or spec.base), r.overrides)
    name = cfg.name if "name" in r.overrides else f"table{spec.id}/{r.name}"
    return cfg.replace(name=name, tags={**cfg.tags, "table": spec.id, "row": r.name})


# -- rendering --------------------------------------------------------------------------------
Result = Outcome
NOT_IN_PAPER = "not in paper"
NO_PAPER_NUMBER = "–"  # the paper prints a dash
NOT_REPORTED = "n/a"  # a computed row whose metrics lack this column's key
NOT_SIGNIFICANT = "ns"
SUBSTITUTED_MARK = "‡"  # our number was computed under a declared substitution (the paper uses †)


@dataclass(frozen=True)
class _Cells:
    ours: str
    paper: str
    diff: str
    low: str = ""  # the 95 % interval of ours, when the row's per-query results are known
    high: str = ""
    p: str = ""  # paired p-value against the reference row
    ns: bool = False  # not significantly different from the reference row


@dataclass(frozen=True)
class Uncertainty:
    """Bootstrap intervals of our cells and paired tests against a reference row.

    `cells[row][metric key] = (low, high, p)`: the 95 % interval and, for rows other than
    the reference, the paired bootstrap p-value of the difference (None for the reference)."""

    reference: str | None  # None: no paired tests (`why_untested` says why)
    cells: Mapping[str, Mapping[str, tuple[float, float, float | None]]]
    n_resamples: int
    seed: int
    why_untested: str = ""

    def note(self) -> str:
        head = (f"[low, high]: 95 % bootstrap interval over queries ({self.n_resamples} resamples, seed "
                f"{self.seed}); ")
        if self.reference is None:
            return head + f"no paired tests: {self.why_untested}."
        return head + (f"{NOT_SIGNIFICANT}: not significantly different from row {self.reference} "
                       "(paired bootstrap, p >= 0.05).")


@dataclass(frozen=True)
class _Line:
    row: RowSpec
    status: str  # ok | missing | failed | not run | peer
    cells: tuple[_Cells, ...]


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _lines(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> list[_Line]:
    unknown = sorted(set(results) - {r.name for r in spec.rows})
    if unknown:
        raise TableError(
            f"table {spec.id}: results for unknown row(s) {', '.join(map(repr, unknown))}; "
            f"rows: {', '.join(r.name for r in spec.rows)}"
        )
    out = []
    for row in spec.rows:
        result = results.get(row.name)
        if isinstance(result, Missing):
            status = "missing"
        elif isinstance(result, Failed):
            status = "failed"
        elif isinstance(result, SameAs):
            status = "same"
        elif result is None:
            status = "not run" if row.runnable else "peer"
        elif isinstance(result, Mapping):
            status = "ok"
        else:
            raise TableError(f"table {spec.id}, row {row.name!r}: result should be a metrics mapping, "
                             "Missing, Failed or SameAs")
        mark = SUBSTITUTED_MARK if row.name in spec.substituted and status in ("ok", "same") else ""
        cells = []
        for col, key in spec.columns.items():
            ours_val: float | None = None
            if status in ("missing", "failed", "same"):
                ours = result.label + mark  # type: ignore[union-attr]
            elif status == "not run":
                ours = "not run"
            elif status == "peer":
                ours = "not run (peer)"
            else:
                v = result.get(key)  # type: ignore[union-attr]
                if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                    ours_val = round(float(v), 2)
                    ours = _fmt(ours_val) + mark
                else:  # absent, None or NaN: the run did not report this metric
                    ours = NOT_REPORTED
            paper_val = row.paper.get(col)
            paper = NOT_IN_PAPER if row.extra else NO_PAPER_NUMBER if paper_val is None else _fmt(paper_val)
            diff = ""
            if ours_val is not None and paper_val is not None:
                d = round(ours_val - paper_val, 2)
                diff = f"{d + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0: no "-0.00"
            stats = unc.cells.get(row.name, {}).get(key) if unc is not None and ours_val is not None else None
            if stats is not None:
                lo, hi, p = stats
                ns = p is not None and p >= 0.05
                cells.append(_Cells(ours, paper, diff, _fmt(lo), _fmt(hi), "" if p is None else f"{p:.3f}", ns))
            else:
                cells.append(_Cells(ours, paper, diff))
        out.append(_Line(row, status, tuple(cells)))
    return out


def _show_dataset_column(spec: TableSpec) -> bool:
    return len({r.paper_dataset for r in spec.rows}) > 1


def _footnotes(spec: TableSpec, unc: Uncertainty | None = None) -> list[str]:
    notes = [unc.note()] if unc is not None else []
    if spec.note:
        notes.append(f"Note: {' '.join(spec.note.split())}")
    inferred = spec.inferred_rows()
    if inferred:
        notes.append("* Inferred row labels: " + "; ".join(f"{r.name} ({r.note})" for r in inferred))
    others = [r for r in spec.rows if r.note and not r.inferred]
    if others:
        notes.append("Row notes: " + "; ".join(f"{r.name}: {r.note}" for r in others))
    return notes


def _header_line(spec: TableSpec) -> str:
    line = (f"Table {spec.id}: {spec.title}. Ours on {', '.join(spec.datasets)}; "
            f"paper on {spec.paper_dataset}.")
    if spec.substituted:
        subs = "; ".join(f"{s} ({why})" for s, why in spec.substitutions)
        line += f" {SUBSTITUTED_MARK} computed with substitutions: {subs}."
    return line


def _with_interval(c: _Cells) -> str:
    if not c.low:
        return c.ours
    return f"{c.ours} [{c.low}, {c.high}]" + (f" {NOT_SIGNIFICANT}" if c.ns else "")


def render_markdown(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> str:
    """A GitHub Markdown table: per column ours | paper | Δ (ours - paper), notes below."""

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    show_ds = _show_dataset_column(spec)
    head = ["Row", *spec.info, *(["Dataset"] if show_ds else [])]
    for col in spec.columns:
        head += [f"{col} ours", f"{col} paper", f"{col} Δ"]
    align = ["---"] * (1 + len(spec.info) + show_ds) + ["---:"] * (3 * len(spec.columns))
    lines = [f"**{esc(_header_line(spec))}**", "", "| " + " | ".join(map(esc, head)) + " |",
             "|" + "|".join(align) + "|"]  # fmt: skip
    for line in _lines(spec, results, unc):
        r = line.row
        cells = [esc(r.name) + (" \\*" if r.inferred else "")]
        cells += [esc(r.info.get(i) or "") for i in spec.info]
        if show_ds:
            cells.append(esc(r.paper_dataset))
        for c in line.cells:
            cells += [esc(_with_interval(c)), esc(c.paper), esc(c.diff)]
        lines.append("| " + " | ".join(cells) + " |")
    foot = _footnotes(spec, unc)
    if foot:
        lines.append("")
        lines += [esc(f).replace("* Inferred", "\\* Inferred", 1) + "  " for f in foot]
    return "\n".join(lines) + "\n"


def render_csv(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> str:
    """One rectangular CSV: a header row, then one row per table row (no comment lines, so
    any CSV reader takes it). Paper "–" cells are empty; our cells hold a number or a reason."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "row", "inferred", "peer", "extra", *spec.info, "paper_dataset", "status"]
    for col in spec.columns:
        head += [f"{col} ours", f"{col} paper", f"{col} diff"]
        if unc is not None:
            head += [f"{col} ci low", f"{col} ci high", f"{col} p vs {unc.reference}"]
    head += ["note", "substituted"]
    w.writerow(head)
    for line in _lines(spec, results, unc):
        r = line.row
        rec = [spec.id, r.name, str(r.inferred).lower(), str(r.peer).lower(), str(r.extra).lower()]
        rec += [r.info.get(i) or "" for i in spec.info]
        rec += [r.paper_dataset, line.status]
        for c in line.cells:
            rec += [c.ours, "" if c.paper == NO_PAPER_NUMBER else c.paper, c.diff]
            if unc is not None:
                rec += [c.low, c.high, c.p]
        rec += [r.note or "", "true" if r.name in spec.substituted else "false"]
        w.writerow(rec)
    return buf.getvalue()


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "✓": r"\checkmark{}", "–": "--", "†": r"\dag{}", "‡": r"\ddag{}", "Δ": r"$\Delta$",
}  # fmt: skip


def _tex(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def render_latex(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> str:
    """A `table` float with a plain `tabular` (no package beyond amssymb for \\checkmark)."""
    show_ds = _show_dataset_column(spec)
    n_left = 1 + len(spec.info) + show_ds
    colspec = "l" * n_left + "|" + "|".join("rrr" for _ in spec.columns)
    top = ["Row", *spec.info, *(["Dataset"] if show_ds else [])]
    first = [_tex(h) for h in top] + [rf"\multicolumn{{3}}{{c}}{{{_tex(c)}}}" for c in spec.columns]
    second = [""] * n_left + ["ours", "paper", r"$\Delta$"] * len(spec.columns)
    out = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{_tex(_header_line(spec))}}}",
        rf"\begin{{tabular}}{{{colspec}}}",
        r"\hline",
        " & ".join(first) + r" \\",
        " & ".join(second) + r" \\",
        r"\hline",
    ]
    for line in _lines(spec, results, unc):
        r = line.row
        cells = [_tex(r.name) + (r"$^{*}$" if r.inferred else "")]
        cells += [_tex(r.info.get(i) or "") for i in spec.info]
        if show_ds:
            cells.append(_tex(r.paper_dataset))
        for c in line.cells:
            ours = _tex(c.ours) if line.status == "ok" else rf"\textit{{{_tex(c.ours)}}}"
            if c.low:
                ours += rf" {{\scriptsize [{c.low}, {c.high}]}}" + (rf"$^{{{NOT_SIGNIFICANT}}}$" if c.ns else "")
            cells += [ours, _tex(c.paper), _tex(c.diff)]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\hline", r"\end{tabular}"]
    foot = _footnotes(spec, unc)
    if foot:
        out.append(r"\par\smallskip\footnotesize")
        out += [_tex(f).replace("* Inferred", r"$^{*}$ Inferred", 1) + r"\par" for f in foot]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def render_all(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> dict[str, str]:
    """All three renderings, keyed by file extension ("md", "csv", "tex")."""
    return {
        "md": render_markdown(spec, results, unc),
        "csv": render_csv(spec, results, unc),
        "tex": render_latex(spec, results, unc),
    }
