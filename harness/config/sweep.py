"""Sweep spaces: a YAML file that names a base run config, objectives and a search space.

The space is checked when the file is loaded: every bound and choice must make a valid
config, every objective must be a metric of the dataset's protocol, the sampler and pruner
must be known. `base:` is relative to the sweep file (`harness.config.files`). A categorical
choice may set several config keys together (a *coupled* choice, e.g. an embedder and the
precision its matrices were cached in).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config.experiment import ExperimentConfig, load_config
from harness.config.files import resolve_base
from harness.core.errors import ConfigError, quote
from harness.core.io import canonical_json, sha256_hex
from harness.core.yaml_io import load_yaml
from harness.eval.protocols import protocol_of

SPACE_TYPES = ("float", "int", "categorical")
SWEEP_KEYS = ("name", "base", "overrides", "objectives", "space", "sampler", "pruner", "select")
SELECTION_RULES = ("objective", "weighted", "floor")
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS_KNOWN = ("median",)


@dataclass(frozen=True)
class Selection:
    """How a sweep picks one trial (its best config, each cross-validation fold's choice).

    - `objective`: the single objective's best (the only rule a one-objective sweep needs);
    - `weighted`: the largest sum of `weights[metric] * value` over the objectives (a
      minimised objective counts negatively);
    - `floor`: the best `metric` among the trials whose other objectives reach `floors`
      (e.g. the best mAP@avg with R1@0.5 >= 58): a trial below a floor is never chosen.
    """

    rule: str
    objectives: tuple[tuple[str, str], ...]
    weights: Mapping[str, float]
    metric: str = ""
    floors: Mapping[str, float] | None = None

    def score(self, values: Mapping[str, float]) -> float | None:
        """The trial's score under the rule (larger is better); None: not eligible."""
        sign = {m: (1.0 if d == "maximize" else -1.0) for m, d in self.objectives}
        if any(v is None or v != v for v in values.values()):  # NaN
            return None
        if self.rule == "objective":
            (m, _), = self.objectives
            return sign[m] * values[m]
        if self.rule == "weighted":
            return sum(w * sign[m] * values[m] for m, w in self.weights.items())
        for m, lo in (self.floors or {}).items():
            if sign[m] * values[m] < sign[m] * lo:
                return None
        return sign[self.metric] * values[self.metric]

    def describe(self) -> str:
        if self.rule == "objective":
            return f"best {self.objectives[0][0]} ({self.objectives[0][1]})"
        if self.rule == "weighted":
            return "largest weighted sum " + " + ".join(f"{w:g} * {m}" for m, w in self.weights.items())
        floors = ", ".join(f"{m} >= {v:g}" for m, v in (self.floors or {}).items())
        return f"best {self.metric} with {floors}"


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
    select: Selection | None = None

    def selection(self) -> Selection:
        """How this sweep picks one trial (the single objective's best by default)."""
        return self.select or Selection("objective", self.objectives, {})

    def base_config(self, extra: Mapping[str, Any] | None = None) -> ExperimentConfig:
        return load_config(resolve_base(self.path, self.base), {**self.overrides, **(extra or {})})

    def study_name(self, overrides: Mapping[str, Any], substitutions: tuple[str, ...] = ()) -> str:
        """`sweep-<name>-<digest>`: the digest covers what the trials compute (the base
        config with the command line's overrides, the space, objectives, sampler, pruner,
        and the declared substitutions), so another setting is another study."""
        identity: dict[str, Any] = {
            "base": self.base_config(overrides).hash(), "space": self.space,
            "objectives": self.objectives, "sampler": self.sampler, "pruner": self.pruner,
        }
        if substitutions:
            identity["substitute"] = list(substitutions)
        return f"sweep-{self.name}-{sha256_hex(canonical_json(identity))[:8]}"


def load_sweep(path: str | Path) -> SweepSpec:
    """Load and check a sweep file: keys, objectives, and every bound and choice of the space."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(SWEEP_KEYS))}")
    for key in ("name", "base", "objectives", "space"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
    if not isinstance(data["objectives"], list) or not data["objectives"]:
        raise ConfigError(f"{path}: 'objectives' should be a non-empty list of {{metric, direction}}")
    objectives = []
    for o in data["objectives"]:
        if not isinstance(o, dict) or "metric" not in o:
            raise ConfigError(f"{path}: each objective needs 'metric' (and 'direction'), got {quote(o)}")
        direction = o.get("direction", "maximize")
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{path}: direction must be maximize or minimize, got {direction!r}")
        objectives.append((str(o["metric"]), direction))
    space = data["space"]
    if not isinstance(space, dict):
        raise ConfigError(f"{path}: 'space' should map config keys to distributions")
    fields = set(ExperimentConfig.__dataclass_fields__)
    for param, dist in space.items():
        if not isinstance(dist, dict) or dist.get("type") not in SPACE_TYPES:
            raise ConfigError(f"{path}: space.{param} needs type: float | int | categorical")
        if param not in fields and not _coupled(dist):
            raise ConfigError(f"{path}: space parameter {param!r} is not a config key (a name that "
                              "is not one takes categorical choices that are mappings of config keys)")
    for key in ("overrides", "sampler", "pruner", "select"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"{path}: {key!r} should be a mapping")
    spec = SweepSpec(
        str(data["name"]), str(data["base"]), dict(data.get("overrides") or {}), tuple(objectives),
        dict(space), dict(data.get("sampler") or {"type": "tpe"}), data.get("pruner"), path,
        _selection(data.get("select"), tuple(objectives), path),
    )
    try:  # validates base + overrides now, not in a worker
        base = spec.base_config()
    except ConfigError as e:  # the message names the base file; say which sweep used it
        raise ConfigError(f"{path}: base/overrides: {e}") from None
    _check_space(spec, base)
    _check_search(spec)
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
                raise ConfigError(f"{where}: 'low' and 'high' should be {d['type']}s, got {quote(lo, 60)}, {quote(hi, 60)}")
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
                raise ConfigError(f"{where}: {quote(v)} does not make a valid config: {e}") from None


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


def whole(value: Any, path: Path, key: str) -> int:
    """A whole number >= 0 from a sweep file, or an error naming the file and the key."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{path}: {key} should be a whole number >= 0, got {value!r:.40}")
    return value


def _check_search(spec: SweepSpec) -> None:
    """The sampler and pruner named, and their whole-number settings."""
    kind = spec.sampler.get("type", "tpe")
    if kind not in SAMPLERS:
        raise ConfigError(f"{spec.path}: sampler type must be tpe, random or nsga2, got {kind!r}")
    for key in ("seed", "n_startup_trials"):
        if spec.sampler.get(key) is not None:
            whole(spec.sampler[key], spec.path, f"sampler.{key}")
    if spec.pruner:
        if spec.pruner.get("type", "median") not in PRUNERS_KNOWN:
            raise ConfigError(f"{spec.path}: pruner type must be median")
        whole(spec.pruner.get("n_startup_trials", 5), spec.path, "pruner.n_startup_trials")


def _selection(raw: Mapping[str, Any] | None, objectives: tuple[tuple[str, str], ...], path: Path) -> Selection:
    """The sweep's `select:` rule, checked against its objectives."""
    metrics = [m for m, _ in objectives]
    if raw is None:
        if len(objectives) > 1:
            raise ConfigError(f"{path}: a sweep with several objectives ({', '.join(metrics)}) declares how "
                              "to pick one trial: select: {rule: weighted, weights: {...}} or "
                              "{rule: floor, metric: ..., floors: {...}}")
        return Selection("objective", objectives, {})
    rule = raw.get("rule")
    unknown = sorted(set(raw) - {"rule", "weights", "metric", "floors"})
    if rule not in SELECTION_RULES or unknown:
        raise ConfigError(f"{path}: select should be {{rule: {' | '.join(SELECTION_RULES)}, ...}}, got "
                          f"{dict(raw)!r:.120}")
    if rule == "objective":
        if len(objectives) != 1:
            raise ConfigError(f"{path}: select rule 'objective' needs a single objective")
        return Selection("objective", objectives, {})
    if rule == "weighted":
        weights = raw.get("weights")
        if not isinstance(weights, dict) or not weights or set(weights) - set(metrics) or not all(
                isinstance(w, int | float) and not isinstance(w, bool) for w in weights.values()):
            raise ConfigError(f"{path}: select.weights should map objectives ({', '.join(metrics)}) to numbers")
        return Selection("weighted", objectives, {m: float(w) for m, w in weights.items()})
    metric, floors = raw.get("metric"), raw.get("floors")
    if metric not in metrics or not isinstance(floors, dict) or set(floors) - set(metrics) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in floors.values()):
        raise ConfigError(f"{path}: select rule 'floor' needs metric: one of {', '.join(metrics)} and floors: "
                          "{objective: value}")
    return Selection("floor", objectives, {}, str(metric), {m: float(v) for m, v in floors.items()})
