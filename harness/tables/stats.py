"""How sure a table's numbers are: per-query results, bootstrap intervals, paired tests.

Every computed row keeps its per-query results (a file per row under the output folder,
keyed by the cache fingerprint its number came from). From them each cell gets a 95 %
bootstrap interval and each row a paired bootstrap test against the table's reference row
on the same resamples. The intervals travel with the rows' MLflow runs as metrics
(`metrics_of`), so a table rendered from MLflow alone shows them too (`from_runs`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.config.experiment import ExperimentConfig
from harness.config.settings import Settings
from harness.config.table import TableSpec
from harness.core.errors import DataFileMissing
from harness.core.results import MissingInputs
from harness.eval.bootstrap import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    SavedPerQuery,
    compare,
    intervals,
    read_per_query,
    save_per_query,
)
from harness.eval.protocols import PerQuery
from harness.report.tracking import metric_key
from harness.runner.trial import Pools, trial

NOT_SIGNIFICANT = "ns"  # a row not significantly different from the reference (p >= 0.05)
REFERENCE_TAG = "granalign.reference_row"  # the row a table's paired tests compare against
UNTESTED_TAG = "granalign.untested"  # why a table's rows have no paired tests ("" they have)
BOOTSTRAP_TAG = "granalign.bootstrap"  # "<resamples>/<seed>" of the intervals on a row's run


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



def per_query_path(settings: Settings, study: str, row: str, cfg: ExperimentConfig) -> Path:
    """Where a row's per-query results are kept: under the output folder, by study and row."""
    safe = re.sub(r"[^\w.+=-]+", "_", row)
    return Path(settings.out_dir) / "tables" / "per_query" / study / f"{safe}-{cfg.hash()[:8]}.npz"


def row_per_query(spec: TableSpec, settings: Settings, study: str, configs: Mapping[str, ExperimentConfig],
                  done: Mapping[str, Any], pools: Pools) -> dict[str, SavedPerQuery]:
    """Each computed row's per-query results, from the cache its number came from: the file
    its worker saved, or (a row computed before per-query files existed, or on another
    machine) computed again here, pure computation that logs nothing, but only where this
    cache has the fingerprint the row was computed with. Rows that cannot be had so are
    left out (their numbers stand, without an interval)."""
    out: dict[str, SavedPerQuery] = {}
    highlights = any(k.startswith("HL-") for k in spec.columns.values())
    for row, cfg in configs.items():
        want = done[row].user_attrs.get("cache_fingerprint", "")
        path = per_query_path(settings, study, row, cfg)
        saved = read_per_query(path) if path.is_file() else None
        if saved is not None and saved.fingerprint == want and len(saved.qids):
            out[row] = saved
            continue
        try:
            prep = pools(cfg.dataset).get(cfg)
        except (MissingInputs, DataFileMissing):
            continue
        if want and prep.fingerprint != want:
            continue  # this machine's cache is not the one the row's number came from
        pq: PerQuery = {}
        trial(prep, cfg, highlights=highlights, per_query=pq)
        qids = [q.qid for q in prep.queries]
        save_per_query(path, pq, qids, prep.fingerprint)
        out[row] = SavedPerQuery(pq, np.asarray(qids), prep.fingerprint)
    return out


def uncertainty(spec: TableSpec, per_query: Mapping[str, SavedPerQuery], n_resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED, reference: str | None = None) -> Uncertainty | None:
    """95 % intervals of every computed cell, and paired tests of each row against the
    reference row (`reference`, else the table's `reference:`, else, for a table that names
    none, the first computed row) on the same queries. A named reference without per-query
    results here means no tests (the note says so), never a test against another row."""
    if not per_query:
        return None
    order = [r.name for r in spec.rows if r.name in per_query]
    named = reference or spec.reference
    ref_row = named if named is not None else order[0]
    why = "" if ref_row in per_query else f"row {ref_row} (the reference) has no per-query results here"
    keys = set(spec.columns.values())
    cells: dict[str, dict[str, tuple[float, float, float | None]]] = {}
    ref = {k: v for k, v in per_query[ref_row].per_query.items() if k in keys} if not why else {}
    for row in order:
        mine = {k: v for k, v in per_query[row].per_query.items() if k in keys}
        if not mine:
            continue
        ci = intervals(mine, n_resamples, seed)
        paired = (bool(ref) and row != ref_row
                  and np.array_equal(per_query[row].qids, per_query[ref_row].qids))
        tests = compare(ref, mine, n_resamples, seed) if paired else {}
        cells[row] = {k: (v.low, v.high, tests[k].p if k in tests else None) for k, v in ci.items()}
    return Uncertainty(None if why else ref_row, cells, n_resamples, seed, why)


def metrics_of(unc: Uncertainty, row: str) -> dict[str, float]:
    """A row's intervals (and p-values) as MLflow metrics of its run."""
    metrics: dict[str, float] = {}
    for key, (lo, hi, p) in unc.cells.get(row, {}).items():
        metrics[f"{metric_key(key)}_ci_low"] = lo
        metrics[f"{metric_key(key)}_ci_high"] = hi
        if p is not None:
            metrics[f"{metric_key(key)}_p_vs_reference"] = p
    return metrics


def tags_of(unc: Uncertainty) -> dict[str, str]:
    """What a row's run says about the tests its metrics come from."""
    return {REFERENCE_TAG: unc.reference or "", BOOTSTRAP_TAG: f"{unc.n_resamples}/{unc.seed}",
            UNTESTED_TAG: unc.why_untested}


def from_runs(spec: TableSpec, runs: Mapping[str, Any]) -> Uncertainty | None:
    """The intervals and p-values `metrics_of` put on the rows' MLflow runs."""
    cells: dict[str, dict[str, tuple[float, float, float | None]]] = {}
    reference, setup, why = None, None, ""
    for row, run in runs.items():
        m, tags = run.data.metrics, run.data.tags
        if REFERENCE_TAG not in tags:
            continue
        reference, setup = tags[REFERENCE_TAG], tags.get(BOOTSTRAP_TAG, f"{DEFAULT_RESAMPLES}/{DEFAULT_SEED}")
        why = tags.get(UNTESTED_TAG, "")
        cells[row] = {
            key: (m[f"{metric_key(key)}_ci_low"], m[f"{metric_key(key)}_ci_high"],
                  m.get(f"{metric_key(key)}_p_vs_reference"))
            for key in spec.columns.values() if f"{metric_key(key)}_ci_low" in m
        }
    if reference is None or setup is None:
        return None
    n, seed = (int(x) for x in setup.split("/"))
    return Uncertainty(reference or None, cells, n, seed, why)
