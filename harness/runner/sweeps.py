"""Hyperparameter sweeps: Optuna studies over a search space declared in YAML.

A sweep samples configs with TPE (optionally multi-objective), random search or NSGA-II,
with median pruning on growing query subsets (25 %, 50 %, then all). Any number of worker
processes (on any number of machines, with a PostgreSQL storage) share the study. A worker
takes a trial only while complete + pruned + running trials are below the budget, decided
under the study's lock (`harness.runner.studies`), so a sweep ends with exactly `n_trials`
finished trials; the trial of a killed worker is failed and retried (Optuna's
`RetryHeartbeatStaleTrialCallback`), so none is lost. Before the first trial the sweep
checks that the cache feeds its configs, and it stops (with the `missing:` report) when it
does not. Every trial is a nested MLflow child run under one parent run per sweep, with the
trial's whole config as its params (runs of different sweeps compare by parameter).

The space itself (loading and checks) is `harness.config.sweep`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from harness.config.experiment import ExperimentConfig
from harness.config.settings import Settings
from harness.config.sweep import (
    SweepSpec,
    best_config,
    config_values,
    load_sweep,
    stored_values,
    whole,
)
from harness.core.errors import ConfigError, HarnessError
from harness.core.faults import fault_point
from harness.core.io import atomic_write_text
from harness.core.query import Dataset
from harness.core.results import MissingInputs
from harness.data.spec import source_digest
from harness.eval.bootstrap import save_per_query
from harness.eval.protocols import PerQuery, brief
from harness.method.substitutions import parse_substitutions
from harness.report.tracking import (
    RunWriter,
    Tracker,
    check_tracking_uri,
    metric_key,
    provenance_tags,
    study_tracker,
)
from harness.runner import studies
from harness.runner.crossval import choose, cv_folds, pool_held_out, summarize
from harness.runner.mirror import MirroredStorage
from harness.runner.trial import (
    SUBSTITUTIONS_TAG,
    Pools,
    get_or_substitute,
    ground_truth_gap,
    trial,
)

PRUNE_FRACTIONS = (0.25, 0.5)


class SweepStopped(HarnessError):
    """A sweep that cannot reach its budget (every trial fails)."""


def suggest(trial: optuna.Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
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


def write_best_config(path: str | Path, space: str | Path, summary: Mapping[str, Any],
                      overrides: Mapping[str, Any], substitutions: Sequence[str] = ()) -> ExperimentConfig:
    """The sweep's best trial as a run config (YAML, every key written out), with where it
    came from in its header: `granalign run PATH` reproduces the trial."""
    if not summary.get("best"):
        raise ConfigError(f"sweep {summary.get('sweep')}: no finished trial, so no best config to write")
    spec = load_sweep(space)
    best = summary["best"][0]
    cfg = best_config(spec, best["params"], overrides)
    cfg = cfg.replace(name=f"best-{spec.name}", tags={})
    values = ", ".join(f"{m} = {v}" for (m, _), v in zip(spec.objectives, best["values"], strict=True))
    header = (f"# The best trial of sweep {spec.name} ({spec.path}), study {summary.get('study')}: trial "
              f"{best['number']}, {values}\n# Picked by the sweep's rule: {spec.selection().describe()}.\n")
    if "cv" in summary:
        header += "".join(f"# {line}\n" for line in cv_lines(summary["cv"]).splitlines())
        header += ("# The cross-validated estimate is the number to expect on unseen queries; the values above "
                   "were chosen on these queries.\n")
    header += ("# Written by `granalign sweep --best-config`; `granalign run` on this file reproduces it"
               f"{' with --substitute ' + ' --substitute '.join(substitutions) if substitutions else ''}.\n")
    data = {k: v for k, v in cfg.to_dict().items() if k != "tags"}
    atomic_write_text(Path(path), header + yaml.safe_dump(data, sort_keys=False))
    return cfg


def _sampler(spec: SweepSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler; worker k of a parallel sweep gets seed + k (equal seeds would
    make every worker propose the same parameters, trial after trial)."""
    kind = spec.sampler.get("type", "tpe")
    seed = spec.sampler.get("seed")
    if seed is not None:
        seed = whole(seed, spec.path, "sampler.seed") + worker
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=bool(spec.sampler.get("multivariate", True)),
            n_startup_trials=whole(spec.sampler.get("n_startup_trials", 10), spec.path, "sampler.n_startup_trials"))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if not spec.pruner or len(spec.objectives) > 1:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=whole(spec.pruner.get("n_startup_trials", 5), spec.path, "pruner.n_startup_trials"))


def _finished(study: optuna.Study) -> int:
    return studies.count(study, TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Fold:
    """Fold `index` of `k` of a cross-validated sweep: its search runs on the other folds."""

    index: int
    k: int
    seed: int

    def folds(self, dataset: Dataset) -> np.ndarray:
        return cv_folds([q.vid for q in dataset.queries], self.k, self.seed)

    def train(self, dataset: Dataset) -> np.ndarray:
        return np.flatnonzero(self.folds(dataset) != self.index)

    def held_out(self, dataset: Dataset) -> np.ndarray:
        return np.flatnonzero(self.folds(dataset) == self.index)

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.k} (seed {self.seed})"


def study_name(spec: SweepSpec, settings: Settings, fold: Fold | None = None) -> str:
    name = spec.study_name(sweep_overrides(spec, settings), settings.substitutions)
    return f"{name}-cv{fold.index + 1}of{fold.k}s{fold.seed}" if fold else name


def per_query_path(settings: Settings, study: str, number: int) -> Path:
    """Where a sweep trial's per-query results are kept: under the output folder, by study."""
    return Path(settings.out_dir) / "sweeps" / study / "per_query" / f"trial-{number:06d}.npz"


FAIL_LIMIT = 3  # failed trials (none finished) after which a sweep stops: every trial fails


def swept_keys(spec: SweepSpec) -> set[str]:
    """The config keys every trial sets (a `--set` of one of them is not applied)."""
    keys: set[str] = set()
    for name, d in spec.space.items():
        if d["type"] == "categorical":
            sets = [set(config_values(spec.space, {name: c})) for c in d["choices"]]
            keys |= set.intersection(*sets) if sets else set()
        else:
            keys.add(name)
    return keys


def sweep_overrides(spec: SweepSpec, settings: Settings) -> dict[str, Any]:
    """The command line's config overrides the sweep applies: those of keys the space does
    not set on every trial (`not_applied` says which were dropped)."""
    swept = swept_keys(spec)
    return {k: v for k, v in settings.config_overrides().items() if k not in swept}


def not_applied(spec: SweepSpec, settings: Settings) -> list[str]:
    swept = swept_keys(spec)
    return [f"{k}={v}" for k, v in settings.overrides.items() if k in swept]


def trial_tags(spec: SweepSpec, cfg: ExperimentConfig, number: int, fingerprint: str,
               fold: Fold | None = None) -> dict[str, Any]:
    """A trial's MLflow tags: the config's own tags (`tags:` of the config, `--set tags=`),
    then the sweep's, which win on a clash."""
    own = {k: v for k, v in cfg.tags.items() if k != FOLD_TAG}  # the fold tag tells studies apart
    return {**own, "sweep": spec.name, "trial": number, "config_hash": cfg.hash(),
            "cache_fingerprint": fingerprint, "swept": ",".join(spec.space),
            **({FOLD_TAG: str(fold)} if fold else {})}


class SweepWorker(studies.StudyWorker):
    """Takes trials of a sweep study while its budget (trials, and time) allows, computes
    and logs them."""

    def __init__(self, space: str | Path, settings: Settings, parent_id: str, n_trials: int,
                 worker: int = 0, sink: Any = None, fold: Fold | None = None, run: str = "",
                 deadline: float | None = None) -> None:
        self.spec = load_sweep(space)
        self.settings = settings
        self.base = self.spec.base_config(sweep_overrides(self.spec, settings))
        self.pool = Pools(settings)(self.base.dataset)
        self.dataset = self.pool.dataset(self.base.dataset, self.base.limit)
        self.dataset_digest = source_digest(self.dataset)
        self.url = studies.storage_url(settings.storage)
        self.name = study_name(self.spec, settings, fold)
        self.fold = fold
        # a fold's search sees its training queries only
        self.queries = fold.train(self.dataset) if fold else None
        # the trials are read once a claim, under the lock, and served from memory after it
        self.storage = MirroredStorage(optuna.storages.get_storage(studies.open_storage(self.url)))
        self.study = optuna.load_study(study_name=self.name, storage=self.storage,
                                       sampler=_sampler(self.spec, worker), pruner=_pruner(self.spec))
        self.study_id = self.storage.get_study_id_from_name(self.name)
        self.parent_id = parent_id
        self.tracker = study_tracker("sweep", self.spec.name, settings.tracking_uri, background=True, sink=sink)
        self.n_trials = n_trials
        self.run_id = run  # this sweep command's id: failures are counted per command
        self.deadline = deadline  # time.time() after which no trial is started (--timeout)
        self.retry = studies.retry_callback()
        self.subs = parse_substitutions(settings.substitutions)
        with contextlib.suppress(MissingInputs):  # read before the first claim (a trial reports what is missing)
            get_or_substitute(self.pool, self.base, self.subs)
        # highlight metrics cost a third of a trial: computed only when an objective is one
        self.highlights = any(m.startswith("HL-") for m, _ in self.spec.objectives)

    def claim(self) -> tuple[optuna.Trial, None] | None:
        """A new (or retried) trial of this process, or None once the budget is taken or
        the time is up. Raises SweepStopped when trials only fail."""
        if self.deadline is not None and time.time() >= self.deadline:
            return None
        with studies.study_lock(self.url, self.name):
            trials = self.storage.sync(self.study_id)  # one read serves every count, ask and the trial
            if studies.reap_dead_trials(self.study, self.retry, trials):
                trials = self.storage.sync(self.study_id)
            used = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for t in trials)
            if used >= self.n_trials:
                return None
            # this command's trials: a study's earlier failures (a cache since filled) or
            # successes do not decide whether this command's trials only fail
            mine = [t for t in trials if studies.worker_of(t).get(RUN_KEY) == self.run_id]
            finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in mine)
            errors = [t for t in mine if t.state == TrialState.FAIL and "error" in t.user_attrs]
            if (len(errors) >= FAIL_LIMIT and not finished) or len(errors) >= max(FAIL_LIMIT, self.n_trials):
                first = "the first " if not finished else ""
                raise SweepStopped(f"sweep {self.spec.name}: stopped after {first}{len(errors)} trials failed "
                                   f"({finished} finished); the last failed with: {errors[-1].user_attrs['error']}")
            t = self.study.ask()
            studies.claim(t, **{RUN_KEY: self.run_id})
            return t, None

    def compute(self, t: optuna.Trial, what: None) -> None:
        params = suggest(t, self.spec.space)
        cfg = self.base.replace(**config_values(self.spec.space, params), name=f"{self.spec.name}/trial{t.number}")
        prep, cfg = get_or_substitute(self.pool, cfg, self.subs)
        if self.queries is not None:
            prep = prep.select(self.queries)
        # the MLflow run is written when the trial ends, off the trial's path, by the sweep's
        # writer process: a trial and its run share the tags `granalign.study` and `trial`.
        # Its params are the trial's whole config, as a table row's are.
        run_id = self.tracker.child(
            self.parent_id, f"trial {t.number}", "trial", cfg.flat_params(),
            trial_tags(self.spec, cfg, t.number, prep.fingerprint, self.fold), defer=True)
        self.started(run_id)
        self.tracker.log_dataset(run_id, self.dataset.label, self.dataset_digest, self.dataset.source)
        t.set_user_attr(FINGERPRINT_ATTR, prep.fingerprint)  # what a rerun writes a lost run with
        fault_point("sweep:trial")  # tests slow trials down here (`|sleep=S`)
        if len(self.spec.objectives) == 1 and self.spec.pruner:
            metric = self.spec.objectives[0][0]
            for step, frac in enumerate(PRUNE_FRACTIONS):
                n = max(1, int(len(prep.queries) * frac))
                value = brief(trial(prep.head(n), cfg, highlights=self.highlights))[metric]
                if not math.isfinite(value):  # no number on this subset (e.g. no short moments)
                    continue
                t.report(value, step)
                self.tracker.log_metrics(run_id, {f"partial/{metric_key(metric)}": value}, step)
                if t.should_prune():
                    self.tracker.set_tags(run_id, {"status": "pruned"})
                    self.tracker.finish(run_id)
                    self.study.tell(t, state=TrialState.PRUNED)
                    return
        per_query: PerQuery = {}
        flat = brief(trial(prep, cfg, highlights=self.highlights, per_query=per_query))
        values = [float(flat[m]) for m, _ in self.spec.objectives]
        bad = [f"{m} = {v}" for (m, _), v in zip(self.spec.objectives, values, strict=True) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"objective {', '.join(bad)} on {self.dataset.label} (no queries it is defined "
                             "on?): nothing to optimise")
        t.set_user_attr(METRICS_ATTR, flat)
        # every trial's per-query results, so that any selection rule can be re-scored later
        save_per_query(per_query_path(self.settings, self.name, t.number), per_query,
                       [q.qid for q in prep.queries], prep.fingerprint)
        self.tracker.log_metrics(run_id, {metric_key(k): v for k, v in flat.items()})
        self.tracker.set_tags(run_id, {"status": "ok"})
        self.tracker.finish(run_id)
        self.study.tell(t, values[0] if len(values) == 1 else values)


RUN_KEY = "sweep_run"  # in a trial's worker attribute: the sweep command that ran it
FOLD_TAG = "cv_fold"  # on the MLflow runs of a cross-validated sweep's fold searches
METRICS_ATTR = "metrics"
FINGERPRINT_ATTR = "cache_fingerprint"


def _sweep_worker_main(space: str, settings: Settings, parent_id: str, n_trials: int, worker: int,
                       sink: Any, fold: Fold | None, run: str, deadline: float | None) -> None:
    SweepWorker(space, settings, parent_id, n_trials, worker, sink, fold, run, deadline).run()


def check_inputs(spec: SweepSpec, settings: Settings) -> None:
    """Raise MissingInputs (before any trial) when the cache cannot feed the sweep's base
    config, or any categorical choice of the space."""
    base = spec.base_config(sweep_overrides(spec, settings))
    pools = Pools(settings)
    configs = [base] + [base.replace(**config_values(spec.space, {p: c})) for p, d in spec.space.items()
                        if d["type"] == "categorical" for c in d["choices"]]
    subs = parse_substitutions(settings.substitutions)
    gaps = []
    no_gt = ground_truth_gap(pools(base.dataset).dataset(base.dataset, base.limit))
    if no_gt is not None:  # nothing to optimise against
        gaps.append(no_gt)
    for cfg in configs:
        try:
            get_or_substitute(pools(cfg.dataset), cfg, subs)
        except MissingInputs as e:
            gaps.extend(m for m in e.missing if m not in gaps)
    if gaps:
        raise MissingInputs(gaps, base.dataset, note=pools(base.dataset).cache.absence_note)


def _run_study(spec: SweepSpec, settings: Settings, parent_id: str, tracker: Tracker, n_trials: int,
               run: str, deadline: float | None, fold: Fold | None = None) -> optuna.Study:
    """Create (or resume) one study of the sweep and run its workers until `n_trials` trials
    are complete or pruned, or the `deadline` (time.time()) passes: the sweep's own study, or
    a cross-validation fold's search. `run` names this command (failures count per command);
    the MLflow runs of trials finished without one (an interrupted writer) are written first."""
    name = study_name(spec, settings, fold)
    url = studies.storage_url(settings.storage)
    study = optuna.create_study(study_name=name, storage=studies.open_storage(url),
                                directions=[d for _, d in spec.objectives], load_if_exists=True)
    if study.metric_names is None:  # the objectives by name, in optuna-dashboard too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([m for m, _ in spec.objectives])
    with studies.study_lock(url, name):
        studies.reap_dead_trials(study, studies.retry_callback())
    studies.close_orphan_runs(study, tracker, parent_id, {FOLD_TAG: str(fold) if fold else ""})
    backfill_runs(spec, settings, study, tracker, parent_id, fold=fold)
    if _finished(study) < n_trials:
        writer = RunWriter(settings.tracking_uri)  # MLflow writes on another core
        try:
            if settings.workers <= 1:
                SweepWorker(spec.path, settings, parent_id, n_trials, sink=writer.sink, fold=fold, run=run,
                            deadline=deadline).run()
            else:
                codes = studies.run_workers(_sweep_worker_main, [
                    (str(spec.path), settings, parent_id, n_trials, k, writer.sink, fold, run, deadline)
                    for k in range(settings.workers)])
                if any(codes):
                    print(f"warning: sweep workers exited with {codes}", file=sys.stderr, flush=True)
        except BaseException:
            writer.abort()  # what is queued is written, briefly; a rerun writes the rest
            raise
        writer.close()
    studies.close_orphan_runs(study, tracker, parent_id, {FOLD_TAG: str(fold) if fold else ""})
    backfill_runs(spec, settings, study, tracker, parent_id, mine=True, fold=fold)
    return study


def _objective_values(spec: SweepSpec, t: Any) -> dict[str, float]:
    return dict(zip((m for m, _ in spec.objectives), t.values, strict=True))


def chosen_trial(study: optuna.Study, spec: SweepSpec) -> Any | None:
    """The COMPLETE trial the sweep's selection rule picks (None: no trial is eligible)."""
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    number = choose(((n, _objective_values(spec, t)) for n, t in done.items()), spec.selection())
    return None if number is None else done[number]


def cross_validate(spec: SweepSpec, settings: Settings, parent_id: str, tracker: Tracker, n_trials: int,
                   k: int, seed: int, best_on_all: Mapping[str, float], run: str = "",
                   deadline: float | None = None) -> dict[str, Any] | None:
    """Nested cross-validation of the sweep (`harness.runner.crossval`): a search of
    `n_trials` per fold on the other folds' queries, its winner scored on the held-out fold,
    the pooled held-out values against the winner on all queries. None when the time budget
    (`deadline`) ran out before every fold's search finished."""
    base = spec.base_config(sweep_overrides(spec, settings))
    pool = Pools(settings)(base.dataset)
    dataset = pool.dataset(base.dataset, base.limit)
    subs = parse_substitutions(settings.substitutions)
    highlights = any(m.startswith("HL-") for m, _ in spec.objectives)
    parts, folds = [], []
    for index in range(k):
        fold = Fold(index, k, seed)
        study = _run_study(spec, settings, parent_id, tracker, n_trials, run, deadline, fold)
        if _finished(study) < n_trials and deadline is not None and time.time() >= deadline:
            return None  # the time budget ran out: an estimate from short searches would mislead
        t = chosen_trial(study, spec)
        if t is None:
            raise SweepStopped(f"sweep {spec.name}: fold {fold} has no trial its rule can pick")
        cfg = best_config(spec, t.params, sweep_overrides(spec, settings))
        prep, cfg = get_or_substitute(pool, cfg, subs)
        held_out = fold.held_out(dataset)
        per_query: PerQuery = {}
        metrics = brief(trial(prep.select(held_out), cfg, highlights=highlights, per_query=per_query))
        parts.append((held_out, per_query))
        folds.append({"fold": str(fold), "study": study.study_name, "trial": t.number,
                      "train": _objective_values(spec, t), "held_out": {m: metrics[m] for m, _ in spec.objectives},
                      "queries": int(held_out.size), "params": t.params})
    pooled = pool_held_out(len(dataset.queries), parts)
    estimate = summarize(pooled, best_on_all, [m for m, _ in spec.objectives])
    return {"k": k, "seed": seed, "n_trials_per_fold": n_trials, "rule": spec.selection().describe(),
            "metrics": estimate, "folds": folds}


MAX_TIMEOUT = 30 * 24 * 3600.0  # seconds: a month


def run_sweep(space: str | Path, settings: Settings, n_trials: int, echo: bool = True,
              cv: int = 0, cv_seed: int = 0, timeout: float | None = None) -> dict[str, Any]:
    """Run (or resume) a sweep until `n_trials` trials are complete or pruned, or `timeout`
    seconds have passed (no trial starts after that; running ones finish); with `cv`, then a
    nested cross-validation of it (`cross_validate`: `cv` more searches, within the same
    time budget)."""
    t0 = time.perf_counter()
    deadline = time.time() + timeout if timeout is not None else None
    spec = load_sweep(space)
    dropped = not_applied(spec, settings)
    for item in dropped:
        print(f"note: not applied: {item} (the sweep's space sets {item.split('=', 1)[0]} on every trial)",
              file=sys.stderr, flush=True)
    check_inputs(spec, settings)
    name = study_name(spec, settings)
    check_tracking_uri(settings.tracking_uri)  # both stores checked before either is created
    studies.open_storage(studies.storage_url(settings.storage))  # a damaged storage fails here
    tracker = study_tracker("sweep", spec.name, settings.tracking_uri)
    base = spec.base_config(sweep_overrides(spec, settings))
    parent_id = tracker.parent(name, name, provenance_tags(
        base.hash(), "", base.dataset,
        {**base.tags, "sweep": spec.name, "space": str(spec.path), "n_trials": n_trials,
         "swept": ",".join(spec.space), "seed": spec.sampler.get("seed", ""),
         **({"not_applied": ", ".join(dropped)} if dropped else {}),
         "objectives": ",".join(m for m, _ in spec.objectives), "select": spec.selection().describe(),
         **({SUBSTITUTIONS_TAG: ", ".join(settings.substitutions)} if settings.substitutions else {})}))
    tracker.log_params(parent_id, base.flat_params())  # the base config: what trials change is on them
    tracker.finish_pending(parent_id)
    run = uuid.uuid4().hex
    try:
        study = _run_study(spec, settings, parent_id, tracker, n_trials, run, deadline)
        summary = sweep_summary(study, spec)
        tracker.log_text(parent_id, json.dumps(summary, indent=2), "sweep_summary.json")
        if len(spec.objectives) > 1:
            tracker.log_text(parent_id, json.dumps(summary["pareto"], indent=2), "pareto_front.json")
        result = None
        if cv and summary["best"]:
            best = dict(zip((m for m, _ in spec.objectives), summary["best"][0]["values"], strict=True))
            result = cross_validate(spec, settings, parent_id, tracker, n_trials, cv, cv_seed, best, run, deadline)
        if result is not None:
            summary["cv"] = result
            tracker.log_text(parent_id, json.dumps(summary["cv"], indent=2), "cross_validation.json")
            tracker.log_metrics(parent_id, {
                f"{prefix}{metric_key(m)}{suffix}": v[field]
                for m, v in summary["cv"]["metrics"].items()
                for prefix, field, suffix in (("cv/", "cv", ""), ("cv/", "ci_low", "_ci_low"),
                                              ("cv/", "ci_high", "_ci_high"), ("best_on_all/", "best_on_all", ""),
                                              ("optimism/", "optimism", ""))})
    except BaseException:
        with contextlib.suppress(Exception):  # the error that ended the sweep is the one to report
            tracker.finish(parent_id, "FAILED")
        raise
    finished = _finished(study)
    timed_out = finished < n_trials and deadline is not None and time.time() >= deadline
    if timed_out:
        summary["stopped"] = f"time budget of {timeout:g} s reached: {finished} of {n_trials} trials finished"
    elif cv and summary["best"] and "cv" not in summary:
        summary["stopped"] = (f"time budget of {timeout:g} s reached during the cross-validation "
                              f"({cv} searches of {n_trials} trials): no estimate")
    if "stopped" in summary:
        print(f"note: {summary['stopped']}; a rerun continues the study", file=sys.stderr, flush=True)
    tracker.finish(parent_id, "FINISHED" if finished >= n_trials or timed_out else "FAILED")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["study"] = name
    if echo:
        print(json.dumps(summary, indent=2))
        if "cv" in summary:
            print(cv_lines(summary["cv"]))
    return summary


def backfill_runs(spec: SweepSpec, settings: Settings, study: optuna.Study, tracker: Any, parent_id: str,
                  mine: bool = False, fold: Fold | None = None) -> int:
    """Write the MLflow run of every finished trial that has none (its sweep was interrupted
    before its writer wrote it), from what the trial holds: its params (the config), its
    metrics, its partial values, its error. Only trials whose sweep process is gone, or
    (`mine`, after this process's writer closed) this process's own; a reaped trial (its
    worker died) has no run by design, and its retry has its own. The runs written."""
    # a cross-validated sweep's fold searches share the parent: a run is its fold's and trial's
    have = {(r.data.tags.get(FOLD_TAG, ""), r.data.tags.get("trial")) for r in tracker.children(parent_id)
            if r.info.status in ("FINISHED", "FAILED")}
    fold_tag = str(fold) if fold else ""
    reaped = set(study.user_attrs.get(studies.REAPED_ATTR, []))
    base = spec.base_config(sweep_overrides(spec, settings))
    subs = parse_substitutions(settings.substitutions)
    pool = Pools(settings)(base.dataset) if subs else None
    written = 0
    for t in study.get_trials(deepcopy=False):
        if (fold_tag, str(t.number)) in have or t.number in reaped:
            continue
        failed = t.state == TrialState.FAIL and "error" in t.user_attrs
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) and not failed:
            continue
        owner = studies.worker_of(t).get("owner")
        if not (mine and owner == os.getpid()) and not studies.owner_gone(t):
            continue
        cfg = base.replace(**config_values(spec.space, stored_values(spec.space, t.params)),
                           name=f"{spec.name}/trial{t.number}")
        if pool is not None:  # the config the trial ran; one whose inputs are missing failed as it is
            with contextlib.suppress(MissingInputs):
                cfg = get_or_substitute(pool, cfg, subs)[1]
        run_id = tracker.child(parent_id, f"trial {t.number}", "trial", cfg.flat_params(),
                               {**trial_tags(spec, cfg, t.number, t.user_attrs.get(FINGERPRINT_ATTR, ""), fold),
                                "granalign.backfilled": "true"}, defer=True)
        for step, value in sorted(t.intermediate_values.items()):
            tracker.log_metrics(run_id, {f"partial/{metric_key(spec.objectives[0][0])}": value}, step)
        tracker.log_metrics(run_id, {metric_key(k): v for k, v in t.user_attrs.get(METRICS_ATTR, {}).items()})
        status = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned"}.get(t.state, "failed")
        tracker.set_tags(run_id, {"status": status, **({"error": t.user_attrs["error"]} if failed else {})})
        tracker.finish(run_id, "FAILED" if failed else "FINISHED")
        written += 1
    return written


def cv_lines(cv: Mapping[str, Any]) -> str:
    """The cross-validation in words: estimate, interval, best-on-all, optimism."""
    out = [f"cross-validated ({cv['k']} folds by video, seed {cv['seed']}, {cv['n_trials_per_fold']} trials a "
           f"fold, rule: {cv['rule']}):"]
    for m, v in cv["metrics"].items():
        out.append(f"  {m}: {v['cv']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}] on held-out queries; "
                   f"{v['best_on_all']:.2f} best on all queries; selection optimism {v['optimism']:+.2f}")
    return "\n".join(out)


def sweep_summary(study: optuna.Study, spec: SweepSpec) -> dict[str, Any]:
    """Trial counts, the trial the selection rule picks (`best`), and for several objectives
    the Pareto front."""
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    chosen = chosen_trial(study, spec) if _finished(study) else None
    best = [{"number": chosen.number, "values": chosen.values, "params": chosen.params}] if chosen else []
    out: dict[str, Any] = {"sweep": spec.name, "objectives": [list(o) for o in spec.objectives],
                           "select": spec.selection().describe(), "trials": states, "best": best}
    if len(spec.objectives) > 1:
        front = study.best_trials if _finished(study) else []
        out["pareto"] = [{"number": t.number, "values": t.values, "params": t.params}
                         for t in sorted(front, key=lambda t: t.number)]
    return out
