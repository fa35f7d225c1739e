"""A table's rows as run: their configs under the command line's settings.

`--set` overrides change each row's base (a key the row sets itself keeps the row's value),
`--demo` replaces the dataset of every row; `effective_spec` says in the table's note what
the command line changed and where it did not apply.
"""

from __future__ import annotations

import dataclasses

from harness.config.experiment import ExperimentConfig, load_config
from harness.config.settings import DEMO_OVERRIDES, Settings
from harness.config.table import TableSpec, row_config
from harness.core.errors import ConfigError
from harness.core.io import canonical_json, sha256_hex
from harness.data.spec import dataset_spec


def row_configs(spec: TableSpec, settings: Settings) -> dict[str, ExperimentConfig]:
    """Runnable rows -> config. `--set` overrides change the base: a key that the row sets
    itself (Table 6's `captions: blip2`) keeps the row's value. `--demo` replaces the
    dataset of every row."""
    if settings.overrides:  # checked on the base even where every row sets the key itself
        try:
            load_config(spec.base_path(), settings.overrides)
        except ConfigError as e:
            given = " ".join(f"--set {k}={v}" for k, v in settings.overrides.items())
            raise ConfigError(f"{given}: {e}") from None
    out = {}
    for row in spec.runnable_rows():
        cfg = row_config(spec, row)
        under = {k: v for k, v in settings.overrides.items() if k not in (row.overrides or {})}
        if settings.demo:
            under.update(DEMO_OVERRIDES)
        out[row.name] = cfg.replace(**under) if under else cfg
    return out


def effective_spec(spec: TableSpec, settings: Settings) -> TableSpec:
    """The spec as run: the datasets really used, and the command line's overrides noted."""
    over = settings.identity()
    if not over:
        return spec
    datasets = spec.datasets
    if "dataset" in over:
        label = str(over["dataset"])
        if dataset_spec(label).synthetic:
            label += " (SYNTHETIC demo data: our numbers say nothing about the paper's)"
        datasets = (label,)
    # `--set` keys apply under the rows' own overrides (row_configs): say where they did
    rows = spec.runnable_rows()
    shown, ignored = [], []
    for k, v in settings.overrides.items():
        if k == "dataset" and settings.demo:
            continue
        setting = sum(1 for r in rows if k in (r.overrides or {}))
        if setting == len(rows) and rows:
            ignored.append(f"{k}={v}")
        else:
            shown.append(f"{k}={v}" + (f" (rows that do not set {k})" if setting else ""))
    note = spec.note or ""
    if ignored:
        note = f"Not applied: {', '.join(ignored)} (every row sets it). {note}".strip()
    if shown:
        note = f"Our rows were run with {', '.join(shown)} (the paper's settings otherwise). {note}".strip()
    return dataclasses.replace(spec, datasets=datasets, note=note or None)


def table_study_name(spec: TableSpec, settings: Settings) -> str:
    """`table<id>-<digest>`: another set of overrides or substitutions is another study."""
    over = settings.identity()
    return f"table{spec.id}-{sha256_hex(canonical_json(over))[:8]}"


def primary_metric(spec: TableSpec) -> str:
    """The metric a row's trial value is (the table's first column)."""
    return next(iter(spec.columns.values()))
