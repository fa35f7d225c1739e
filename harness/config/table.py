"""The paper's tables as data: load and check the YAML specs under `ablations/`.

Each table of the paper is one declarative file (`ablations/table3.yaml`, ...; the format is
in `ablations/README.md`): a base run config, one row per line of the paper's table with the
config overrides that reproduce it, and the paper's numbers transcribed from the text. Why
data and not code: the transcription can be reviewed line by line against the paper, a new
ablation is a new file, and a typo (a metric key, a config field, a column the paper never
had) fails when the file is loaded, with the file and the row, not after hours of runs.
A `base:` (the table's or a row's) is relative to the table file, as every `base:` is
(`harness.config.files`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.config.experiment import ExperimentConfig, from_dict, load_config
from harness.config.files import resolve_base
from harness.core.errors import ConfigError
from harness.core.registries import DATASETS
from harness.core.yaml_io import load_yaml
from harness.eval.protocols import protocol_of

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

    def base_path(self, row: RowSpec | None = None) -> Path:
        """The run config a row starts from: the row's `base`, else the table's, relative
        to the table file."""
        base = (row.base if row is not None and row.base else None) or self.base
        return resolve_base(self.path or Path.cwd() / "table.yaml", base)

    def row(self, name: str) -> RowSpec:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"table {self.id}: no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def runnable_rows(self) -> tuple[RowSpec, ...]:
        """The rows a driver has to run (every row with a config)."""
        return tuple(r for r in self.rows if r.runnable)

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
    base_path = resolve_base(spec.path or Path.cwd() / "table.yaml", base)
    try:
        cfg = load_config(base_path, overrides) if base_path.is_file() else from_dict(overrides, where="overrides")
    except ConfigError as e:
        raise TableError(f"{where}: {e}") from None
    if (base_path.is_file() or "dataset" in overrides) and cfg.dataset not in spec.datasets:
        raise TableError(
            f"{where}: the row runs on {cfg.dataset!r}, which is not among the table's datasets "
            f"({', '.join(spec.datasets)})"
        )


def row_config(spec: TableSpec, row: RowSpec | str) -> ExperimentConfig:
    """The run config of one row: its base file (the row's, else the table's) + overrides.

    The config's `name` becomes `table<id>/<row>` and its tags gain `table` and `row`, so
    that a tracked run says which cell it fills; neither is part of the config hash, so a
    row that equals another table's row (Table 3 (c) and Table 1) is still one computation.
    """
    r = spec.row(row) if isinstance(row, str) else row
    if r.overrides is None:
        raise TableError(f"{spec.path}, row {r.name!r}: a peer row with no config cannot be run")
    cfg = load_config(spec.base_path(r), r.overrides)
    name = cfg.name if "name" in r.overrides else f"table{spec.id}/{r.name}"
    return cfg.replace(name=name, tags={**cfg.tags, "table": spec.id, "row": r.name})
