"""The Optuna-driven runner: paper tables and hyperparameter sweeps, tracked in MLflow.

A *table* is an Optuna study whose grid is the table's rows (`GridSampler` over the row
names). Rows still to do are enqueued as trials and popped by one or more worker
processes; a finished row (same config hash) is never recomputed, so a second run of a
table only re-renders it. Rows the cache cannot feed are not trials: they are reported as
`missing: <stage>/<backend>` and logged once as child runs saying so.

A *sweep* is a study over a search space declared in YAML (`experiments/sweeps/`), sampled
by TPE (optionally multi-objective) with median pruning on growing query subsets. Worker
processes share the study through its RDB storage; heartbeats let a resumed sweep fail
and retry the trial of a killed worker, so no trial is lost.

Every row or trial is a nested MLflow child run under one parent run per table or sweep,
opened by hand through `harness.tracking`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.cache import Cache, canonical_json, sha256_hex
from harness.config import ConfigError, ExperimentConfig, load_config, parse_override
from harness.data import DataError
from harness.pipeline import InputPool, brief, trial
from harness.sources import MissingInputs, Prepared
from harness.tables import Missing, TableSpec, load_table, render_all, row_config

DEFAULT_STORAGE = "sqlite:///optuna.db"
STORAGE_ENV = "GRANALIGN_OPTUNA_STORAGE"
DEMO_OVERRIDES = {"dataset": "demo:val"}


def storage_url(url: str | None = None) -> str:
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def _sqlite_lock_path(url: str) -> Path | None:
    """`<db>.lock` beside a SQLite file database; None for other RDBs and in-memory SQLite."""
    if not url.startswith("sqlite:///") or url in ("sqlite://", "sqlite:///:memory:"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0] + ".lock")


class BudgetReached(RuntimeError):
    """A sweep worker asked for a trial beyond the sweep's budget; it stops."""


_PROCESS_LOCK = threading.RLock()
_HELD: dict[Path, int] = {}  # lock file -> depth, while this process holds it


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive flock on `path` across processes, re-entrant within one process
    (threads of the process are serialised too). None: no lock."""
    if path is None:
        yield
        return
    with _PROCESS_LOCK:
        if path in _HELD:
            _HELD[path] += 1
            try:
                yield
            finally:
                _HELD[path] -= 1
            return
        import fcntl

        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            _HELD[path] = 1
            try:
                yield
            finally:
                del _HELD[path]
                fcntl.flock(fh, fcntl.LOCK_UN)


_STORAGE_CLASS: Any = None


def _storage_class() -> Any:
    """RDBStorage with (1) a file lock around trial state changes and trial creation on
    SQLite and (2) an optional trial budget, checked under that lock.

    (1) RDBStorage claims a WAITING trial (and fails a stale one) by reading its state,
    then writing the new one. On PostgreSQL/MySQL the read is `SELECT ... FOR UPDATE`;
    SQLite ignores that and pysqlite runs the read outside the write transaction, so two
    worker processes can both claim the same trial (seen: 5 of 300 enqueued trials popped
    twice by two processes). The lock makes read-and-write one step across processes.

    (2) With `budget = (study_id, n)`, a new trial (or a WAITING one popped) is refused
    with BudgetReached once finished + running trials (of live workers) reach n: without
    it, every worker starts another trial while the others run their last ones, and the
    sweep ends with up to `workers - 1` trials too many (Optuna's MaxTrialsCallback counts
    finished trials only)."""
    global _STORAGE_CLASS
    if _STORAGE_CLASS is not None:
        return _STORAGE_CLASS
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    class GranAlignRDBStorage(RDBStorage):  # type: ignore[misc]
        lock_path: Path | None = None
        budget: tuple[int, int] | None = None

        def _check_budget(self) -> None:
            if self.budget is None:
                return
            study_id, n = self.budget
            states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            used = sum(1 for t in self.get_all_trials(study_id, deepcopy=False, states=states)
                       if t.state != TrialState.RUNNING or not _worker_dead(t))
            if used >= n:
                raise BudgetReached(f"{n} trials finished or running")

        def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
            with _file_lock(self.lock_path):
                if state == TrialState.RUNNING:
                    self._check_budget()
                return super().set_trial_state_values(trial_id, state, values)

        def _create_new_trial(self, study_id: int, template_trial: Any = None) -> Any:
            # no template: Study.ask's new trial; a template: add_trial / enqueue / a retry
            with _file_lock(self.lock_path):
                if template_trial is None:
                    self._check_budget()
                return super()._create_new_trial(study_id, template_trial)

    _STORAGE_CLASS = GranAlignRDBStorage
    return _STORAGE_CLASS


def rdb_storage(url: str, **kwargs: Any) -> Any:
    """Optuna's RDBStorage for `url`, locked across processes on SQLite (see _storage_class)."""
    _optuna()
    lock = _sqlite_lock_path(url)
    path = lock.resolve() if lock is not None else None
    # creating a fresh database's schema from two processes at once fails on SQLite
    # (UNIQUE constraint on alembic_version): the first one creates it under the lock
    with _file_lock(path):
        storage = _storage_class()(url, **kwargs)
    storage.lock_path = path
    return storage


@dataclass
class Settings:
    """Where a table or sweep reads and writes; shared with worker processes as JSON."""

    storage: str | None = None
    tracking_uri: str | None = None
    cache_dir: str | None = None
    data_root: str | None = None
    workers: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs"
    demo: bool = False
    artifacts: bool = True

    def resolved_overrides(self) -> dict[str, Any]:
        return {**(DEMO_OVERRIDES if self.demo else {}), **self.overrides}

    def open_cache(self, dataset: str | None = None) -> Cache:
        """The demo's own cache for the demo dataset (built on first use), else the cache."""
        if self.demo or (dataset or "").startswith("demo"):
            from harness.demo import ensure_demo_cache

            return ensure_demo_cache(self.cache_dir)
        return Cache(self.cache_dir)


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# -- tables ------------------------------------------------------------------------------------
@dataclass
class TableRun:
    spec: TableSpec
    results: dict[str, Mapping[str, Any] | Missing]
    rendered: dict[str, str]
    computed: int
    reused: int
    seconds: float
    study: str
    parent_run_id: str | None = None


def row_configs(spec: TableSpec, settings: Settings) -> dict[str, ExperimentConfig]:
    """Runnable rows -> config. `--set` overrides change the base: a key that the row sets
    itself (Table 6's `captions: blip2`) keeps the row's value. `--demo` replaces the
    dataset of every row."""
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
    import dataclasses

    over = settings.resolved_overrides()
    if not over:
        return spec
    datasets = spec.datasets
    if "dataset" in over:
        label = str(over["dataset"])
        if label.startswith("demo"):
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
    over = settings.resolved_overrides()
    return f"table{spec.id}-{sha256_hex(canonical_json(over))[:8]}"


def _primary_metric(spec: TableSpec) -> str:
    return next(iter(spec.columns.values()))


def _missing_of(err: Exception, dataset: str) -> Missing:
    if isinstance(err, MissingInputs):
        return Missing(err.label)
    if isinstance(err, DataError) and "missing data file" in str(err):
        return Missing(f"missing: dataset {dataset}")
    if isinstance(err, DataError):
        return Missing(f"error: {err}")
    return Missing(f"missing: {err}")


def _row_result(pool: InputPool, cfg: ExperimentConfig) -> tuple[Prepared, dict[str, Any]]:
    prep = pool.get(cfg)
    return prep, trial(prep, cfg, return_predictions=True)


def _efficiency(cache: Cache, cfg: ExperimentConfig, n_queries: int) -> dict[str, float] | Missing:
    """Table 4's InT / GMU for a config, from the build timings recorded in the cache."""
    try:
        from harness.build import efficiency_summary
    except ImportError:
        return Missing("missing: timings (no cache builder in this install)")
    return efficiency_summary(cache, cfg, n_queries)


class RowWorker:
    """Pops enqueued rows of a table study, computes them, logs them; one per process."""

    def __init__(self, spec: TableSpec, settings: Settings, study_name: str, parent_id: str | None) -> None:
        self.spec = spec
        self.settings = settings
        self.configs = row_configs(spec, settings)
        self.cache = settings.open_cache()
        self.pool = InputPool(self.cache, settings.data_root)
        optuna = _optuna()
        self.storage = rdb_storage(storage_url(settings.storage))
        self.study = optuna.load_study(study_name=study_name, storage=self.storage)
        self.parent_id = parent_id
        self.tracker = _tracker(f"table-{spec.id}", settings) if parent_id else None

    def pop(self) -> Any:
        optuna = _optuna()
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    return optuna.Trial(self.study, t._trial_id)
            except UpdateFinishedTrialError:
                continue
        return None

    def run(self) -> int:
        done = 0
        while (t := self.pop()) is not None:
            self.run_one(t)
            done += 1
        return done

    def run_one(self, t: Any) -> None:
        from optuna.trial import TrialState

        name = t.suggest_categorical("row", list(self.configs))
        cfg = self.configs[name]
        run_id = None
        try:
            prep, res = _row_result(self.pool, cfg)
            metrics = dict(brief(res["metrics"]))
            if self.spec.kind == "efficiency":
                eff = _efficiency(self.cache, cfg, len(prep.queries))
                if isinstance(eff, Missing):
                    t.set_user_attr("efficiency_missing", eff.reason)
                else:
                    metrics.update(eff)
            t.set_user_attr("config_hash", cfg.hash())
            t.set_user_attr("cache_fingerprint", prep.fingerprint)
            t.set_user_attr("metrics", metrics)
            if self.tracker is not None and self.parent_id is not None:
                run_id = self._log(name, cfg, prep, res, metrics)
                t.set_user_attr("mlflow_run_id", run_id)
            self.study.tell(t, float(metrics.get(_primary_metric(self.spec), 0.0)))
        except Exception as e:
            if self.tracker is not None and run_id is not None:
                self.tracker.finish(run_id, "FAILED")
            t.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            self.study.tell(t, state=TrialState.FAIL)
            raise

    def _log(self, name: str, cfg: ExperimentConfig, prep: Prepared, res: dict[str, Any],
             metrics: Mapping[str, float]) -> str:
        from harness.tracking import flatten_metrics, provenance_tags

        assert self.tracker is not None and self.parent_id is not None
        tags = provenance_tags(
            cfg.hash(), prep.fingerprint, cfg.dataset,
            {"table": self.spec.id, "row": name, "status": "ok", "seed": cfg.seed},
        )
        run_id = self.tracker.child(self.parent_id, name, "row", cfg.flat_params(), tags)
        flat = flatten_metrics(res["metrics"])
        flat.update({k.replace("@", "_at_"): float(v) for k, v in metrics.items()})
        self.tracker.log_metrics(run_id, flat)
        if self.settings.artifacts:
            _log_row_artifacts(self.tracker, run_id, prep, res)
        self.tracker.finish(run_id)
        return run_id


def _log_row_artifacts(tracker: Any, run_id: str, prep: Prepared, res: dict[str, Any]) -> None:
    from harness.eval import top1_ious
    from harness.plots import query_type, query_type_breakdown, score_curve

    rows = res["predictions"]
    iou = top1_ious(list(prep.queries), rows)
    lines = ["qid,vid,query_type,top1_start,top1_end,top1_iou,r1_0.5,r1_0.7"]
    for q, r, v in zip(prep.queries, rows, iou, strict=True):
        w = r["pred_relevant_windows"][:1]
        s, e = (w[0][0], w[0][1]) if w else ("", "")
        lines.append(f"{q.qid},{q.vid},{query_type(q.query)},{s},{e},{v:.4f},{int(v >= 0.5)},{int(v >= 0.7)}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "per_query.csv").write_text("\n".join(lines) + "\n")
        _, stats = query_type_breakdown(list(prep.queries), iou, d / "query_types.png")
        (d / "query_types.json").write_text(json.dumps(stats, indent=2))
        best = int(np.argmax(iou)) if len(iou) else 0
        for k, qi in enumerate(dict.fromkeys([0, best])):
            if qi < len(rows):
                score_curve(prep.queries[qi], rows[qi], d / f"score_curve_{k}_qid{prep.queries[qi].qid}.png")
        for f in sorted(d.iterdir()):
            tracker.log_file(run_id, f, "plots" if f.suffix == ".png" else None)


def _tracker(experiment: str, settings: Settings) -> Any:
    from harness.tracking import Tracker

    return Tracker(experiment, settings.tracking_uri)


def _completed_rows(study: Any, configs: Mapping[str, ExperimentConfig]) -> dict[str, Any]:
    """row -> its latest COMPLETE trial whose config hash equals the row's current one."""
    from optuna.trial import TrialState

    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = t.params.get("row")
        if name in configs and t.user_attrs.get("config_hash") == configs[name].hash():
            out[name] = t
    return out


def run_table(table: str, settings: Settings, echo: bool = True) -> TableRun:
    """Fill a paper table: compute what the cache supports, mark the rest missing, log."""
    optuna = _optuna()
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    spec = load_table(table)
    configs = row_configs(spec, settings)
    name = table_study_name(spec, settings)
    storage = rdb_storage(storage_url(settings.storage))
    sampler = optuna.samplers.GridSampler({"row": list(configs)}) if configs else None
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )
    tracker = _tracker(f"table-{spec.id}", settings)
    over = settings.resolved_overrides()
    parent_id = tracker.parent(
        name, f"table{spec.id}",
        {"table": spec.id, "title": spec.title, "overrides": json.dumps(over, sort_keys=True),
         "dataset": ",".join(sorted({c.dataset for c in configs.values()}))},
    )

    # which rows can run: a cheap look at the cache, before any trial
    cache = settings.open_cache()
    pool = InputPool(cache, settings.data_root)
    missing: dict[str, Missing] = {}
    for row, cfg in configs.items():
        try:
            pool.get(cfg)
        except (MissingInputs, DataError) as e:
            missing[row] = _missing_of(e, cfg.dataset)
    done = _completed_rows(study, configs)
    todo = [r for r in configs if r not in missing and r not in done]
    waiting = {t.params.get("row") for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    for row in todo:
        if row not in waiting:
            study.enqueue_trial({"row": row}, user_attrs={"config_hash": configs[row].hash()})
    if todo:
        _run_workers(spec, settings, name, parent_id, table)
    done = _completed_rows(study, configs)

    results: dict[str, Mapping[str, Any] | Missing] = {}
    for row in configs:
        if row in done:
            results[row] = done[row].user_attrs["metrics"]
        elif row in missing:
            results[row] = missing[row]
        else:
            failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t.params.get("row") == row]
            err = failed[-1].user_attrs.get("error", "failed") if failed else "not run"
            results[row] = Missing(f"failed: {err}")
    _log_missing_rows(tracker, parent_id, spec, configs, missing)
    rendered = render_all(effective_spec(spec, settings), results)
    _write_table(spec, rendered, settings, tracker, parent_id, results, configs)
    tracker.finish(parent_id)
    run = TableRun(spec, results, rendered, len(todo), len(done) - len(todo), time.perf_counter() - t0,
                   name, parent_id)
    if echo:
        print(rendered["md"])
        print(f"\ntable {spec.id}: {len(todo)} rows computed, {run.reused} reused, "
              f"{len(missing)} missing; {run.seconds:.1f} s; study {name}; MLflow parent run {parent_id}")
    return run


def _run_workers(spec: TableSpec, settings: Settings, study: str, parent_id: str, table: str) -> None:
    if settings.workers <= 1:
        RowWorker(spec, settings, study, parent_id).run()
        return
    job = {"table": table, "settings": asdict(settings), "study": study, "parent_id": parent_id}
    procs = [
        subprocess.Popen([sys.executable, "-m", "harness.runner", "table-worker", json.dumps(job)])
        for _ in range(settings.workers)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"warning: table workers exited with {codes}", file=sys.stderr)


def _log_missing_rows(tracker: Any, parent_id: str, spec: TableSpec,
                      configs: Mapping[str, ExperimentConfig], missing: Mapping[str, Missing]) -> None:
    """One child run per missing row and reason, logged once per parent."""
    from harness.tracking import provenance_tags

    seen = {
        (r.data.tags.get("row"), r.data.tags.get("missing"))
        for r in tracker.children(parent_id)
        if r.data.tags.get("status") == "missing"
    }
    for row, m in missing.items():
        if (row, m.reason) in seen:
            continue
        cfg = configs[row]
        tags = provenance_tags(cfg.hash(), "", cfg.dataset,
                               {"table": spec.id, "row": row, "status": "missing", "missing": m.reason})
        run_id = tracker.child(parent_id, row, "row", cfg.flat_params(), tags)
        tracker.finish(run_id)


def _write_table(spec: TableSpec, rendered: Mapping[str, str], settings: Settings, tracker: Any,
                 parent_id: str, results: Mapping[str, Any], configs: Mapping[str, ExperimentConfig]) -> None:
    from harness.cache import atomic_write_text

    folder = Path(settings.out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "-demo" if settings.demo else ""
    for ext, text in rendered.items():
        atomic_write_text(folder / f"table{spec.id}{suffix}.{ext}", text)
        tracker.log_text(parent_id, text, f"table{spec.id}.{ext}")
    plot = _sensitivity_plot(spec, results, configs, folder / f"table{spec.id}{suffix}.png")
    if plot is not None:
        tracker.log_file(parent_id, plot, "plots")


def _sensitivity_plot(spec: TableSpec, results: Mapping[str, Any], configs: Mapping[str, ExperimentConfig],
                      path: Path) -> Path | None:
    """Fig. 8 for the sensitivity tables: the one config key their rows vary."""
    rows = [r for r in spec.rows if r.overrides]
    keys = {k for r in rows for k in (r.overrides or {})}
    if len(keys) != 1 or not spec.id.upper().startswith("C"):
        return None
    from harness.plots import sensitivity_curve

    (param,) = keys
    xs = [float((r.overrides or {})[param]) for r in rows]
    ours = {col: [None if isinstance(results.get(r.name), Missing) or r.name not in results
                  else results[r.name].get(key) for r in rows]
            for col, key in spec.columns.items()}
    paper = {col: [r.paper.get(col) for r in rows] for col in spec.columns}
    return sensitivity_curve(param, xs, ours, paper, path, f"Table {spec.id}: sensitivity to {param}")


def table_from_mlflow(table: str, settings: Settings, echo: bool = True) -> dict[str, str]:
    """Render a table from what MLflow holds alone: the latest parent run and its children."""
    from harness.tracking import Tracker, evaluator_key

    spec = load_table(table)
    name = table_study_name(spec, settings)
    tracker = Tracker(f"table-{spec.id}", settings.tracking_uri)
    parent = tracker.find_parent(name)
    if parent is None:
        raise LookupError(f"no MLflow parent run for table {spec.id} (study {name}) at {tracker.uri}")
    results: dict[str, Mapping[str, Any] | Missing] = {}
    for run in sorted(tracker.children(parent), key=lambda r: r.info.start_time):
        row = run.data.tags.get("row")
        if row is None:
            continue
        if run.data.tags.get("status") == "missing":
            results.setdefault(row, Missing(run.data.tags.get("missing", "missing")))
        elif run.info.status == "FINISHED":
            results[row] = {evaluator_key(k): v for k, v in run.data.metrics.items()}
    rendered = render_all(effective_spec(spec, settings), results)
    if echo:
        print(rendered["md"])
    return rendered


# -- sweeps --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: str
    overrides: Mapping[str, Any]
    objectives: tuple[tuple[str, str], ...]  # (metric, maximize|minimize)
    space: Mapping[str, Mapping[str, Any]]
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any] | None
    path: Path

    def base_config(self, extra: Mapping[str, Any] | None = None) -> ExperimentConfig:
        return load_config(self.path.parent / self.base, {**self.overrides, **(extra or {})})

    def digest(self, extra: Mapping[str, Any]) -> str:
        return sha256_hex(canonical_json({
            "base": self.base_config(extra).hash(), "space": self.space,
            "objectives": self.objectives, "sampler": self.sampler, "pruner": self.pruner,
        }))[:8]


_SPACE_TYPES = {"float", "int", "categorical"}


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {"name", "base", "overrides", "objectives", "space", "sampler", "pruner"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    for key in ("name", "base", "objectives", "space"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
    objectives = []
    for o in data["objectives"]:
        if not isinstance(o, dict) or "metric" not in o:
            raise ConfigError(f"{path}: each objective needs 'metric' (and 'direction'), got {o!r}")
        direction = o.get("direction", "maximize")
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{path}: direction must be maximize or minimize, got {direction!r}")
        objectives.append((str(o["metric"]), direction))
    fields = set(ExperimentConfig.__dataclass_fields__)
    for param, dist in data["space"].items():
        if param not in fields:
            raise ConfigError(f"{path}: space parameter {param!r} is not a config key")
        if not isinstance(dist, dict) or dist.get("type") not in _SPACE_TYPES:
            raise ConfigError(f"{path}: space.{param} needs type: float | int | categorical")
    spec = SweepSpec(
        str(data["name"]), str(data["base"]), dict(data.get("overrides") or {}), tuple(objectives),
        dict(data["space"]), dict(data.get("sampler") or {"type": "tpe"}), data.get("pruner"), path,
    )
    try:  # validates base + overrides now, not in a worker
        spec.base_config()
    except ConfigError as e:  # the message names the base file; say which sweep used it
        raise ConfigError(f"{path}: base/overrides: {e}") from None
    return spec


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, d in space.items():
        if d["type"] == "float":
            value = trial.suggest_float(name, d["low"], d["high"], step=d.get("step"), log=d.get("log", False))
            # a stepped value is low + k * step in floating point (0.7000000000000001): round it
            # so that equal settings give equal config hashes (a table row, another trial)
            out[name] = round(value, 12) if d.get("step") else value
        elif d["type"] == "int":
            out[name] = trial.suggest_int(name, d["low"], d["high"], step=d.get("step", 1))
        else:
            choices = [json.dumps(c) if isinstance(c, list | dict) else c for c in d["choices"]]
            value = trial.suggest_categorical(name, choices)
            out[name] = json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value
    return out


def _sampler(spec: SweepSpec, worker: int = 0) -> Any:
    """The spec's sampler; worker k of a parallel sweep gets seed + k (equal seeds would
    make every worker propose the same parameters, trial after trial)."""
    optuna = _optuna()
    kind = spec.sampler.get("type", "tpe")
    seed = spec.sampler.get("seed")
    if seed is not None:
        seed = int(seed) + worker
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=bool(spec.sampler.get("multivariate", True)),
                                          n_startup_trials=int(spec.sampler.get("n_startup_trials", 10)))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"{spec.path}: sampler type must be tpe, random or nsga2, got {kind!r}")


def _pruner(spec: SweepSpec) -> Any:
    optuna = _optuna()
    if not spec.pruner or len(spec.objectives) > 1:
        return optuna.pruners.NopPruner()
    if spec.pruner.get("type", "median") != "median":
        raise ConfigError(f"{spec.path}: pruner type must be median")
    return optuna.pruners.MedianPruner(n_startup_trials=int(spec.pruner.get("n_startup_trials", 5)))


HEARTBEAT_INTERVAL = 2  # seconds between a running trial's heartbeats
GRACE_PERIOD = 6  # seconds without a heartbeat after which a trial is stale (failed, retried)
MAX_RETRY = 2


@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Hide Optuna's ExperimentalWarning (heartbeats and their callbacks are 'experimental')."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def sweep_storage(url: str) -> Any:
    """RDB storage with heartbeats: a killed worker's trial is failed and retried (twice at
    most). Optuna >= 4.9 names the callback RetryHeartbeatStaleTrialCallback and the argument
    heartbeat_stale_trial_callback (RetryFailedTrialCallback / failed_trial_callback are
    deprecated and go in 6.0); older versions only have the old names."""
    import optuna.storages as st

    with _quiet_experimental():
        if hasattr(st, "RetryHeartbeatStaleTrialCallback"):
            retry = st.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
            return rdb_storage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                               heartbeat_stale_trial_callback=retry)
        return rdb_storage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                           failed_trial_callback=st.RetryFailedTrialCallback(max_retry=MAX_RETRY))


def _open_sweep_study(spec: SweepSpec, settings: Settings, create: bool, worker: int = 0) -> tuple[Any, str]:
    optuna = _optuna()
    name = f"sweep-{spec.name}-{spec.digest(settings.resolved_overrides())}"
    storage = sweep_storage(storage_url(settings.storage))
    directions = [d for _, d in spec.objectives]
    if create:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                    sampler=_sampler(spec), pruner=_pruner(spec), load_if_exists=True)
    else:
        study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec, worker),
                                  pruner=_pruner(spec))
    return study, name


PRUNE_FRACTIONS = (0.25, 0.5)


class SweepWorker:
    def __init__(self, spec: SweepSpec, settings: Settings, parent_id: str, n_trials: int,
                 worker: int = 0) -> None:
        self.spec = spec
        self.settings = settings
        self.base = spec.base_config(settings.resolved_overrides())
        self.cache = settings.open_cache(self.base.dataset)
        self.pool = InputPool(self.cache, settings.data_root)
        self.study, self.name = _open_sweep_study(spec, settings, create=False, worker=worker)
        self.parent_id = parent_id
        self.tracker = _tracker(f"sweep-{spec.name}", settings)
        self.n_trials = n_trials

    def objective(self, t: Any) -> float | tuple[float, ...]:
        optuna = _optuna()
        from harness.tracking import flatten_metrics, provenance_tags

        t.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "trial": t.number})
        if _budget_used(self.study, before=t.number) >= self.n_trials:
            # another worker started a trial in the same instant and took the last slot
            # (the storage's budget check prevents this on SQLite; other RDBs lack its lock)
            t.set_user_attr("over_budget", True)
            self.study.stop()
            raise OverBudget(f"trial {t.number}: {self.n_trials} trials already done or running")
        params = suggest(t, self.spec.space)
        cfg = self.base.replace(**params, name=f"{self.spec.name}/trial{t.number}")
        prep = self.pool.get(cfg)
        run_id = self.tracker.child(
            self.parent_id, f"trial {t.number}", "trial", cfg.flat_params(),
            provenance_tags(cfg.hash(), prep.fingerprint, cfg.dataset,
                            {"sweep": self.spec.name, "trial": t.number, "seed": cfg.seed}),
        )
        t.set_user_attr("mlflow_run_id", run_id)
        t.set_user_attr("config_hash", cfg.hash())
        delay = float(os.environ.get("GRANALIGN_TRIAL_DELAY", "0") or 0)  # tests: a slow trial
        try:
            if delay:
                time.sleep(delay)
            if len(self.spec.objectives) == 1 and self.spec.pruner:
                metric = self.spec.objectives[0][0]
                for step, frac in enumerate(PRUNE_FRACTIONS):
                    n = max(1, int(len(prep.queries) * frac))
                    value = brief(trial(prep.head(n), cfg))[metric]
                    t.report(value, step)
                    self.tracker.log_metrics(run_id, {f"partial/{metric.replace('@', '_at_')}": value}, step)
                    if t.should_prune():
                        self.tracker.set_tags(run_id, {"status": "pruned"})
                        self.tracker.finish(run_id)
                        raise optuna.TrialPruned()
            metrics = trial(prep, cfg)
            flat = brief(metrics)
            t.set_user_attr("metrics", flat)
            self.tracker.log_metrics(run_id, flatten_metrics(metrics))
            self.tracker.set_tags(run_id, {"status": "ok"})
            self.tracker.finish(run_id)
        except optuna.TrialPruned:
            raise
        except Exception:
            self.tracker.finish(run_id, "FAILED")
            raise
        values = tuple(float(flat[m]) for m, _ in self.spec.objectives)
        return values[0] if len(values) == 1 else values

    def _stop_when_budget_used(self, study: Any, _: Any) -> None:
        """After each trial: stop once finished + still-running trials reach the budget.

        Optuna's MaxTrialsCallback counts finished trials only, so with several workers
        each one starts another trial while the others' last ones run, and the study
        ends with up to `workers - 1` trials too many."""
        if _budget_used(study) >= self.n_trials:
            study.stop()

    def run(self) -> None:
        if _finished_count(self.study) >= self.n_trials:
            return
        backend = getattr(self.study._storage, "_backend", self.study._storage)
        backend.budget = (self.study._study_id, self.n_trials)
        with _quiet_experimental(), contextlib.suppress(BudgetReached):
            self.study.optimize(self.objective, callbacks=[self._stop_when_budget_used],
                                catch=(MissingInputs, OverBudget), gc_after_trial=False)


class OverBudget(RuntimeError):
    """A trial started after the sweep's budget was taken (a race between workers)."""


def _finished_count(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not waited for yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _worker_dead(t: Any) -> bool:
    """True when the trial's worker ran on this host and its process is gone. (A retried
    trial inherits the failed one's user attrs: `worker.trial` tells them apart.)"""
    w = t.user_attrs.get("worker") or {}
    return (w.get("trial") == t.number and w.get("host") == socket.gethostname()
            and isinstance(w.get("pid"), int) and not _pid_alive(w["pid"]))


def _reap_dead_workers(study: Any) -> list[int]:
    """Fail (and so retry) the RUNNING trials of dead workers on this host now, then the
    heartbeat-stale ones of any host; the numbers of the trials failed here."""
    import copy

    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    storage = study._storage
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _worker_dead(t):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                failed.append(t)
        except UpdateFinishedTrialError:
            continue
    get_callback = getattr(storage, "get_heartbeat_stale_trial_callback", None) or getattr(
        storage, "get_failed_trial_callback", None)
    callback = get_callback() if get_callback else None
    with _quiet_experimental():
        for t in failed:
            if callback is not None:
                callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))
        fail_stale_trials(study)
    return [t.number for t in failed]


def _budget_used(study: Any, before: int | None = None) -> int:
    """Finished trials plus the running ones that will finish (workers alive); with
    `before`, only running trials numbered below it count (the earlier trial wins a race)."""
    from optuna.trial import TrialState

    _reap_dead_workers(study)
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if (before is None or t.number < before)]
    return _finished_count(study) + len(running)


def _close_orphan_runs(study: Any, tracker: Any, parent_id: str) -> int:
    """MLflow runs of trials whose worker died stay RUNNING; mark them KILLED.

    A child is an orphan when its Optuna trial is no longer RUNNING (failed, or retried
    and finished); the trial is found by the child's `trial` tag, so a worker killed
    between opening the child and recording its run id leaves no RUNNING run either."""
    from optuna.trial import TrialState

    _reap_dead_workers(study)
    state = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    closed = 0
    for run in tracker.children(parent_id):
        if run.info.status != "RUNNING":
            continue
        number = run.data.tags.get("trial")
        if number is not None and state.get(int(number)) != TrialState.RUNNING:
            tracker.finish(run.info.run_id, "KILLED")
            closed += 1
    return closed


def run_sweep(space: str | Path, settings: Settings, n_trials: int, echo: bool = True) -> dict[str, Any]:
    """Run (or resume) a sweep until `n_trials` trials are complete or pruned."""
    t0 = time.perf_counter()
    spec = load_sweep(space)
    study, name = _open_sweep_study(spec, settings, create=True)
    tracker = _tracker(f"sweep-{spec.name}", settings)
    parent_id = tracker.parent(name, name, {"sweep": spec.name, "space": str(spec.path),
                                            "n_trials": n_trials})
    _close_orphan_runs(study, tracker, parent_id)
    job = {"space": str(spec.path), "settings": asdict(settings), "parent_id": parent_id, "n_trials": n_trials}
    if _finished_count(study) >= n_trials:
        pass  # done already: no worker to start (each costs seconds of imports)
    elif settings.workers <= 1:
        SweepWorker(spec, settings, parent_id, n_trials).run()
    else:
        procs = [subprocess.Popen([sys.executable, "-m", "harness.runner", "sweep-worker",
                                   json.dumps({**job, "worker": k})])
                 for k in range(settings.workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"warning: sweep workers exited with {codes}", file=sys.stderr)
    _close_orphan_runs(study, tracker, parent_id)
    summary = sweep_summary(study, spec)
    tracker.log_text(parent_id, json.dumps(summary, indent=2), "sweep_summary.json")
    if _finished_count(study) >= n_trials:
        tracker.finish(parent_id)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["study"] = name
    if echo:
        print(json.dumps(summary, indent=2))
    return summary


def sweep_summary(study: Any, spec: SweepSpec) -> dict[str, Any]:

    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = [
        {"number": t.number, "values": t.values, "params": t.params}
        for t in (study.best_trials if _finished_count(study) else [])
    ]
    return {"sweep": spec.name, "objectives": [list(o) for o in spec.objectives], "trials": states,
            "best": best[:5]}


# -- command line ----------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        storage=args.storage, tracking_uri=args.tracking_uri, cache_dir=args.cache,
        data_root=args.data_root, workers=args.workers,
        overrides=dict(parse_override(s) for s in args.set or []),
        out_dir=args.out, demo=args.demo,
    )


def _common(p: argparse.ArgumentParser) -> None:
    from harness.cache_cli import add_cache_arg

    p.add_argument("--storage", default=None, help=f"Optuna storage URL (default ${STORAGE_ENV} or {DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the study")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key in every row/trial")
    p.add_argument("--demo", action="store_true", help="run on the built-in SYNTHETIC demo dataset")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default $GRANALIGN_DATA)")
    p.add_argument("--out", default="runs", help="folder for rendered tables (default runs/)")
    add_cache_arg(p)


def cmd_table(args: argparse.Namespace) -> int:
    from harness.tables import list_tables

    settings = _settings(args)
    ids = list_tables() if args.table == "all" else [args.table]
    for tid in ids:
        if args.from_mlflow:
            table_from_mlflow(tid, settings)
        else:
            run_table(tid, settings)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    run_sweep(args.space, _settings(args), args.n_trials)
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    p = top.add_parser("table", help="reproduce a paper table (Optuna grid over its rows, MLflow-tracked)")
    p.add_argument("table", help="table id (3, C1, 13, ...) or 'all'")
    p.add_argument("--from-mlflow", action="store_true", help="render from MLflow alone, compute nothing")
    _common(p)
    p.set_defaults(func=cmd_table)
    s = top.add_parser("sweep", help="an Optuna hyperparameter sweep over a YAML search space")
    s.add_argument("space", help="sweep YAML (see experiments/sweeps/)")
    s.add_argument("--n-trials", type=int, default=50, help="complete + pruned trials to reach")
    _common(s)
    s.set_defaults(func=cmd_sweep)


def _worker_main(argv: Sequence[str]) -> int:
    kind, payload = argv[0], json.loads(argv[1])
    settings = Settings(**payload["settings"])
    if kind == "table-worker":
        spec = load_table(payload["table"])
        RowWorker(spec, settings, payload["study"], payload["parent_id"]).run()
    elif kind == "sweep-worker":
        SweepWorker(load_sweep(payload["space"]), settings, payload["parent_id"], payload["n_trials"],
                    int(payload.get("worker", 0))).run()
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
