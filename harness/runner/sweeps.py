"""Hyperparameter sweeps: Optuna studies over a search space declared in YAML.

A sweep samples configs with TPE (optionally multi-objective), random search or NSGA-II,
with median pruning on growing query subsets (25 %, 50 %, then all). Any number of worker
processes (on any number of machines, with a PostgreSQL storage) share the study. A worker
takes a trial only while complete + pruned + running trials are below the budget, decided
under the study's lock (`harness.runner.studies`), so a sweep ends with exactly `n_trials`
finished trials; the trial of a killed worker is failed and retried (Optuna's
`RetryHeartbeatStaleTrialCallback`), so none is lost. Before the first trial the sweep
checks that the cache feeds its configs, and it stops (with the `missing:` report) when it
does not. Every trial is a nested MLflow child run under one parent run per sweep.

The space is checked when the file is loaded: every bound and choice must make a valid
config, every objective must be a metric of the dataset's protocol.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from harness.config import ExperimentConfig, load_config
from harness.core.errors import ConfigError, HarnessError
from harness.core.io import atomic_write_text, canonical_json, sha256_hex
from harness.core.results import Failed, MissingInputs
from harness.core.yaml_io import load_yaml
from harness.data.spec import source_digest
from harness.eval.protocols import brief, protocol_of
from harness.method.substitutions import parse_substitutions
from harness.report.tracking import (
    RunWriter,
    Tracker,
    check_tracking_uri,
    metric_key,
    provenance_tags,
)
from harness.runner import studies
from harness.runner.settings import Pools, Settings
from harness.runner.trial import SUBSTITUTIONS_TAG, get_or_substitute, ground_truth_gap, trial

PRUNE_FRACTIONS = (0.25, 0.5)
TRIAL_DELAY_ENV = "GRANALIGN_TRIAL_DELAY"  # test hook: seconds each trial sleeps (a slow trial)
# test hook: each trial, once sampled, creates `<file>.<pid>` and waits until <file> exists (at
# most 10 minutes), so a test knows each worker is inside a trial, at this line, and can kill
# or interrupt one there before any trial can end
TRIAL_GATE_ENV = "GRANALIGN_TRIAL_GATE"
_SPACE_TYPES = ("float", "int", "categorical")
_SWEEP_KEYS = ("name", "base", "overrides", "objectives", "space", "sampler", "pruner")


class SweepStopped(HarnessError):
    """A sweep that cannot reach its budget (every trial fails)."""


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
        """The base config under `extra` (`Settings.resolved_overrides()`), whose `substitute`
        says how missing inputs are stood in for: not a config key, so not applied here."""
        keys = {k: v for k, v in (extra or {}).items() if k != "substitute"}
        return load_config(self.path.parent / self.base, {**self.overrides, **keys})

    def digest(self, extra: Mapping[str, Any]) -> str:
        key: dict[str, Any] = {
            "base": self.base_config(extra).hash(), "space": self.space,
            "objectives": self.objectives, "sampler": self.sampler, "pruner": self.pruner,
        }
        if (extra or {}).get("substitute"):  # a substituted sweep is a study of its own
            key["substitute"] = list(extra["substitute"])
        return sha256_hex(canonical_json(key))[:8]

    def study_name(self, extra: Mapping[str, Any]) -> str:
        return f"sweep-{self.name}-{self.digest(extra)}"


def load_sweep(path: str | Path) -> SweepSpec:
    """Load and check a sweep file: keys, objectives, and every bound and choice of the space."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(_SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(_SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_SWEEP_KEYS))}")
    for key in ("name", "base", "objectives", "space"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
    if not isinstance(data["objectives"], list) or not data["objectives"]:
        raise ConfigError(f"{path}: 'objectives' should be a non-empty list of {{metric, direction}}")
    objectives = []
    for o in data["objectives"]:
        if not isinstance(o, dict) or "metric" not in o:
            raise ConfigError(f"{path}: each objective needs 'metric' (and 'direction'), got {o!r}")
        direction = o.get("direction", "maximize")
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{path}: direction must be maximize or minimize, got {direction!r}")
        objectives.append((str(o["metric"]), direction))
    space = data["space"]
    if not isinstance(space, dict):
        raise ConfigError(f"{path}: 'space' should map config keys to distributions")
    fields = set(ExperimentConfig.__dataclass_fields__)
    for param, dist in space.items():
        if not isinstance(dist, dict) or dist.get("type") not in _SPACE_TYPES:
            raise ConfigError(f"{path}: space.{param} needs type: float | int | categorical")
        if param not in fields and not _coupled(dist):
            raise ConfigError(f"{path}: space parameter {param!r} is not a config key (a name that "
                              "is not one takes categorical choices that are mappings of config keys)")
    for key in ("overrides", "sampler", "pruner"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"{path}: {key!r} should be a mapping")
    spec = SweepSpec(
        str(data["name"]), str(data["base"]), dict(data.get("overrides") or {}), tuple(objectives),
        dict(space), dict(data.get("sampler") or {"type": "tpe"}), data.get("pruner"), path,
    )
    try:  # validates base + overrides now, not in a worker
        base = spec.base_config()
    except ConfigError as e:  # the message names the base file; say which sweep used it
        raise ConfigError(f"{path}: base/overrides: {e}") from None
    _check_space(spec, base)
    _sampler(spec)
    _pruner(spec)
    return spec


def _check_space(spec: SweepSpec, base: ExperimentConfig) -> None:
    """Every bound and choice of the space, and every objective, checked on the base config."""
    keys = protocol_of(base.dataset).metric_keys
    for metric, _ in spec.objectives:
        if metric not in keys:
            raise ConfigError(f"{spec.path}: objective metric {metric!r} is not reported on "
                              f"{base.dataset}; valid: {', '.join(keys)}")
    for param, d in spec.space.items():
        where = f"{spec.path}: space.{param}"
        if d["type"] == "categorical":
            values = d.get("choices")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: 'choices' should be a non-empty list")
        else:
            lo, hi = d.get("low"), d.get("high")
            number = int if d["type"] == "int" else (int, float)
            if not all(isinstance(v, number) and not isinstance(v, bool) for v in (lo, hi)):
                raise ConfigError(f"{where}: 'low' and 'high' should be {d['type']}s, got {lo!r}, {hi!r}")
            if lo > hi:
                raise ConfigError(f"{where}: low {lo} > high {hi}")
            step = d.get("step")
            if step is not None and (not isinstance(step, int | float) or isinstance(step, bool) or step <= 0):
                raise ConfigError(f"{where}: step should be > 0, got {step!r}")
            log = d.get("log", False)
            if not isinstance(log, bool):
                raise ConfigError(f"{where}: log should be true or false, got {log!r}")
            if log and (lo <= 0 or step is not None):
                raise ConfigError(f"{where}: a log scale needs low > 0 and no step, got low {lo}, step {step}")
            values = [lo, hi]
        for v in values:
            try:
                base.replace(**config_values(spec.space, {param: v}))
            except ConfigError as e:
                raise ConfigError(f"{where}: {v!r} does not make a valid config: {e}") from None


def _coupled(dist: Mapping[str, Any]) -> bool:
    """Categorical choices that each set several config keys together, e.g. an embedder and
    the precision its matrices were cached in: `{embedder: mpnet, embedder_dtype: bfloat16}`."""
    choices = dist.get("choices")
    return (dist.get("type") == "categorical" and isinstance(choices, list) and bool(choices)
            and all(isinstance(c, dict) for c in choices))


def config_values(space: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled params -> config overrides: a coupled choice contributes its keys."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in space and _coupled(space[name]) and name not in ExperimentConfig.__dataclass_fields__:
            out.update(value)
        else:
            out[name] = value
    return out


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


def stored_values(space: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's params as `suggest` returned them: list or mapping choices decoded from the
    JSON Optuna stores them as, stepped floats rounded."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        d = space.get(name, {})
        if d.get("type") == "categorical" and isinstance(value, str) and value[:1] in "[{":
            out[name] = json.loads(value)
        elif d.get("type") == "float" and d.get("step"):
            out[name] = round(value, 12)
        else:
            out[name] = value
    return out


def best_config(spec: SweepSpec, params: Mapping[str, Any], overrides: Mapping[str, Any]) -> ExperimentConfig:
    """The full config a trial ran: the sweep's base, the command line's overrides, its params."""
    return spec.base_config(overrides).replace(**config_values(spec.space, stored_values(spec.space, params)))


def write_best_config(path: str | Path, space: str | Path, summary: Mapping[str, Any],
                      overrides: Mapping[str, Any]) -> ExperimentConfig:
    """The sweep's best trial as a run config (YAML, every key written out), with where it
    came from in its header: `granalign run PATH` reproduces the trial."""
    if not summary.get("best"):
        raise ConfigError(f"sweep {summary.get('sweep')}: no finished trial, so no best config to write")
    spec = load_sweep(space)
    best = summary["best"][0]
    cfg = best_config(spec, best["params"], overrides)
    cfg = cfg.replace(name=f"best-{spec.name}", tags={})
    subs = list(overrides.get("substitute") or [])
    values = ", ".join(f"{m} = {v}" for (m, _), v in zip(spec.objectives, best["values"], strict=True))
    header = (f"# The best trial of sweep {spec.name} ({spec.path}), study {summary.get('study')}: trial "
              f"{best['number']}, {values}\n# Written by `granalign sweep --best-config`; `granalign run` on this "
              f"file reproduces it{' with --substitute ' + ' --substitute '.join(subs) if subs else ''}.\n")
    data = {k: v for k, v in cfg.to_dict().items() if k not in ("tags", "substitute")}
    atomic_write_text(Path(path), header + yaml.safe_dump(data, sort_keys=False))
    return cfg


def _sampler(spec: SweepSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler; worker k of a parallel sweep gets seed + k (equal seeds would
    make every worker propose the same parameters, trial after trial)."""
    kind = spec.sampler.get("type", "tpe")
    seed = spec.sampler.get("seed")
    if seed is not None:
        seed = _whole(seed, spec.path, "sampler.seed") + worker
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=bool(spec.sampler.get("multivariate", True)),
            n_startup_trials=_whole(spec.sampler.get("n_startup_trials", 10), spec.path, "sampler.n_startup_trials"))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"{spec.path}: sampler type must be tpe, random or nsga2, got {kind!r}")


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if not spec.pruner or len(spec.objectives) > 1:
        return optuna.pruners.NopPruner()
    if spec.pruner.get("type", "median") != "median":
        raise ConfigError(f"{spec.path}: pruner type must be median")
    return optuna.pruners.MedianPruner(
        n_startup_trials=_whole(spec.pruner.get("n_startup_trials", 5), spec.path, "pruner.n_startup_trials"))


def _whole(value: Any, path: Path, key: str) -> int:
    """A whole number >= 0 from a sweep file, or an error naming the file and the key."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{path}: {key} should be a whole number >= 0, got {value!r:.40}")
    return value


def _tracker(spec: SweepSpec, settings: Settings, background: bool = False) -> Tracker:
    return Tracker(f"sweep-{spec.name}", settings.tracking_uri, background)


def _finished(study: optuna.Study) -> int:
    return studies.count(study, TrialState.COMPLETE, TrialState.PRUNED)


class SweepWorker:
    """Takes trials of a sweep study while its budget allows, computes and logs them."""

    def __init__(self, space: str | Path, settings: Settings, parent_id: str, n_trials: int,
                 worker: int = 0, sink: Any = None) -> None:
        self.spec = load_sweep(space)
        self.settings = settings
        self.base = self.spec.base_config(settings.resolved_overrides())
        self.pool = Pools(settings)(self.base.dataset)
        self.dataset = self.pool.dataset(self.base.dataset, self.base.limit)
        self.dataset_digest = source_digest(self.dataset)
        self.url = studies.storage_url(settings.storage)
        self.name = self.spec.study_name(settings.resolved_overrides())
        self.study = optuna.load_study(study_name=self.name, storage=studies.open_storage(self.url),
                                       sampler=_sampler(self.spec, worker), pruner=_pruner(self.spec))
        self.parent_id = parent_id
        self.tracker = Tracker(f"sweep-{self.spec.name}", settings.tracking_uri, background=True, sink=sink)
        self.n_trials = n_trials
        self.retry = studies.retry_callback()
        self.delay = float(os.environ.get(TRIAL_DELAY_ENV, "0") or 0)
        self.subs = parse_substitutions(settings.substitutions)
        # highlight metrics cost a third of a trial: computed only when an objective is one
        self.highlights = any(m.startswith("HL-") for m, _ in self.spec.objectives)

    def next_trial(self) -> optuna.Trial | None:
        """A new (or retried) trial of this process, or None once the budget is taken."""
        with studies.study_lock(self.url, self.name):
            trials = self.study.get_trials(deepcopy=False)  # one read serves every count below
            if studies.reap_dead_trials(self.study, self.retry, trials):
                trials = self.study.get_trials(deepcopy=False)
            used = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for t in trials)
            if used >= self.n_trials:
                return None
            errors = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
            if len(errors) >= max(3, self.n_trials):
                raise SweepStopped(f"sweep {self.spec.name}: {len(errors)} trials failed, the last "
                                   f"with: {errors[-1].user_attrs['error']}")
            t = self.study.ask()
            studies.claim(t)
            return t

    def run(self) -> None:
        try:
            while (t := self.next_trial()) is not None:
                with studies.heartbeat(t):
                    self.run_one(t)
        finally:
            self.tracker.drain()

    def run_one(self, t: optuna.Trial) -> None:
        run_id = None
        try:
            params = suggest(t, self.spec.space)
            cfg = self.base.replace(**config_values(self.spec.space, params), name=f"{self.spec.name}/trial{t.number}")
            prep, cfg = get_or_substitute(self.pool, cfg, self.subs)
            # the MLflow run is written when the trial ends, off the trial's path, by the
            # sweep's writer process: a trial and its run share the tags `granalign.study` and
            # `trial`. What every trial shares (the base config, provenance) is on the parent
            # run; a child carries what differs: the sampled params, the config hash, metrics.
            changed = cfg.flat_params()
            swept = config_values(self.spec.space, params)
            run_id = self.tracker.child(
                self.parent_id, f"trial {t.number}", "trial",
                {k: changed[k] for k in swept if k in changed} | {
                    k: v for k, v in changed.items() if k == "pairing" and self.subs},
                {"sweep": self.spec.name, "trial": t.number, "config_hash": cfg.hash(),
                 "cache_fingerprint": prep.fingerprint,
                 **{k: v for k, v in cfg.tags.items() if k == SUBSTITUTIONS_TAG}},
                defer=True,
            )
            self.tracker.log_dataset(run_id, self.dataset.label, self.dataset_digest, self.dataset.source)
            if self.delay:
                time.sleep(self.delay)
            _wait_for_gate()
            if len(self.spec.objectives) == 1 and self.spec.pruner:
                metric = self.spec.objectives[0][0]
                for step, frac in enumerate(PRUNE_FRACTIONS):
                    n = max(1, int(len(prep.queries) * frac))
                    value = brief(trial(prep.head(n), cfg, highlights=self.highlights))[metric]
                    t.report(value, step)
                    self.tracker.log_metrics(run_id, {f"partial/{metric_key(metric)}": value}, step)
                    if t.should_prune():
                        self.tracker.set_tags(run_id, {"status": "pruned"})
                        self.tracker.finish(run_id)
                        self.study.tell(t, state=TrialState.PRUNED)
                        return
            metrics = trial(prep, cfg, highlights=self.highlights)
            flat = brief(metrics)
            self.tracker.log_metrics(run_id, {metric_key(k): v for k, v in flat.items()})
            self.tracker.set_tags(run_id, {"status": "ok"})
            self.tracker.finish(run_id)
            values = [float(flat[m]) for m, _ in self.spec.objectives]
            self.study.tell(t, values[0] if len(values) == 1 else values)
        except Exception as e:
            failed = Failed.from_error(e)
            t.set_user_attr("error", failed.reason)
            if run_id is not None:
                self.tracker.set_tags(run_id, {"status": "failed", "error": failed.reason})
                self.tracker.finish(run_id, "FAILED")
            self.study.tell(t, state=TrialState.FAIL)


def _wait_for_gate() -> None:
    gate = os.environ.get(TRIAL_GATE_ENV)
    if not gate:
        return
    Path(f"{gate}.{os.getpid()}").touch()
    deadline = time.monotonic() + 600
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


def _sweep_worker_main(space: str, settings: Settings, parent_id: str, n_trials: int, worker: int,
                       sink: Any) -> None:
    SweepWorker(space, settings, parent_id, n_trials, worker, sink).run()


def check_inputs(spec: SweepSpec, settings: Settings) -> None:
    """Raise MissingInputs (before any trial) when the cache cannot feed the sweep's base
    config, or any categorical choice of the space."""
    base = spec.base_config(settings.resolved_overrides())
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


def run_sweep(space: str | Path, settings: Settings, n_trials: int, echo: bool = True) -> dict[str, Any]:
    """Run (or resume) a sweep until `n_trials` trials are complete or pruned."""
    t0 = time.perf_counter()
    spec = load_sweep(space)
    check_inputs(spec, settings)
    name = spec.study_name(settings.resolved_overrides())
    url = studies.storage_url(settings.storage)
    check_tracking_uri(settings.tracking_uri)  # both stores checked before either is created
    study = optuna.create_study(study_name=name, storage=studies.open_storage(url),
                                directions=[d for _, d in spec.objectives], load_if_exists=True)
    tracker = _tracker(spec, settings)
    base = spec.base_config(settings.resolved_overrides())
    parent_id = tracker.parent(name, name, provenance_tags(
        base.hash(), "", base.dataset,
        {"sweep": spec.name, "space": str(spec.path), "n_trials": n_trials,
         "swept": ",".join(spec.space), "seed": spec.sampler.get("seed", "")}))
    tracker.log_params(parent_id, base.flat_params())  # the base config: what trials change is on them
    tracker.finish_pending(parent_id)
    try:
        with studies.study_lock(url, name):
            studies.reap_dead_trials(study, studies.retry_callback())
        studies.close_orphan_runs(study, tracker, parent_id)
        if _finished(study) < n_trials:
            writer = RunWriter(settings.tracking_uri)  # MLflow writes on another core
            try:
                if settings.workers <= 1:
                    SweepWorker(spec.path, settings, parent_id, n_trials, sink=writer.queue).run()
                else:
                    codes = studies.run_workers(_sweep_worker_main, [
                        (str(spec.path), settings, parent_id, n_trials, k, writer.queue)
                        for k in range(settings.workers)])
                    if any(codes):
                        print(f"warning: sweep workers exited with {codes}", flush=True)
            finally:
                writer.close()
        studies.close_orphan_runs(study, tracker, parent_id)
        summary = sweep_summary(study, spec)
        tracker.log_text(parent_id, json.dumps(summary, indent=2), "sweep_summary.json")
    except BaseException:
        tracker.finish(parent_id, "FAILED")
        raise
    tracker.finish(parent_id, "FINISHED" if _finished(study) >= n_trials else "FAILED")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["study"] = name
    if echo:
        print(json.dumps(summary, indent=2))
    return summary


def sweep_summary(study: optuna.Study, spec: SweepSpec) -> dict[str, Any]:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = [
        {"number": t.number, "values": t.values, "params": t.params}
        for t in (study.best_trials if _finished(study) else [])
    ]
    return {"sweep": spec.name, "objectives": [list(o) for o in spec.objectives], "trials": states,
            "best": best[:5]}
