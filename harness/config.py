"""The experiment config: one frozen, typed object per run, with a stable hash.

A YAML file under `experiments/` fills it; ablation rows and sweeps apply overrides to it.
Unknown keys and wrong types fail at load time (with the file), not deep inside a trial.
The hash covers every field that can change a number, so MLflow runs with equal hashes are
the same computation.
"""

from __future__ import annotations

import functools
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from harness.cache import canonical_json, sha256_hex

Pairing = str | tuple[tuple[str, str], ...]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides a run's numbers. Defaults follow docs/METHOD (the paper)."""

    name: str = "granalign"
    dataset: str = "qvhighlights:val"
    recipe: str = "granalign"  # granalign | vtg-gpt
    # cached inputs
    captions: str = "qwen2.5-vl"  # caption backbone: qwen2.5-vl | blip2 | minigptv2 | ...
    caption_model: str | None = None  # model id; None = the backbone's default
    frame_filter: str = "clip-vit-b32"
    frame_filter_model: str | None = None
    rewriter: str = "hf-causal-lm"
    rewriter_model: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    instruction_pair: int = 1
    embedder: str = "minilm"
    embedder_model: str | None = None
    # method
    pairing: Pairing = "granalign"
    m: int = 3  # rewrites per kind used (the builder caches 5); paper: m = 3
    lam: float = 0.3
    K: int = 10  # percent of frames whose aware captions are used; paper: K = 10
    gap: int = 6
    n: int = 20  # percent: bottom-n% pruning
    tau: float = 0.9
    top_k: int = 8
    bins: int = 10
    normalisation: str = "minmax"  # minmax | shift | raw
    prune: str = "frames"  # frames | merge | spans
    span_score: str = "granalign"  # granalign (whole span) | selected (VTG-GPT)
    proposals_from: str = "variants+mean"  # variants+mean | mean
    cq_fallback: str = "ca"  # ca | zero
    max_windows: int = 10
    limit: int | None = None  # first N queries only (quick looks, CI)
    seed: int = 0
    tags: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        if not 1 <= self.m <= 5:
            raise ConfigError(f"m must be in 1..5 (rewrites per kind), got {self.m}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lam must be in [0, 1], got {self.lam}")
        if not 0 < self.K <= 100 or not 0 <= self.n < 100:
            raise ConfigError(f"K must be in (0, 100] and n in [0, 100), got K={self.K}, n={self.n}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        if self.gap < 0 or self.top_k < 1 or self.bins < 1 or self.max_windows < 1:
            raise ConfigError("gap >= 0, top_k >= 1, bins >= 1 and max_windows >= 1 are required")

    # -- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tags"] = dict(self.tags)
        if isinstance(self.pairing, tuple):
            d["pairing"] = [list(p) for p in self.pairing]
        return d

    def hash(self) -> str:
        """sha256 (first 16 hex) over every field that can change a number."""
        d = self.to_dict()
        for k in ("name", "tags"):
            d.pop(k)
        return sha256_hex(canonical_json(d))[:16]

    def replace(self, **overrides: Any) -> ExperimentConfig:
        return from_dict({**self.to_dict(), **overrides})

    def flat_params(self) -> dict[str, str]:
        """String params for MLflow (immutable, one per field)."""
        out = {}
        for k, v in self.to_dict().items():
            if k == "tags":
                continue
            out[k] = canonical_json(v) if isinstance(v, list | dict) else str(v)
        return out


_FIELD_NAMES = {f.name for f in fields(ExperimentConfig)}


@functools.cache
def _field_types() -> dict[str, Any]:
    """Resolved annotations, once: every config (and every sweep trial's) is checked."""
    return typing.get_type_hints(ExperimentConfig)


def _check_type(name: str, value: Any, annotation: Any) -> None:
    tp = _field_types()[name]
    if not _matches(value, tp):
        raise ConfigError(f"config field {name!r} should be {_type_name(tp)}, got {value!r:.80}")


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if origin in (Mapping, dict) or tp is Mapping:
        return isinstance(value, Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _normalise(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    pairing = out.get("pairing")
    if isinstance(pairing, list):
        try:
            out["pairing"] = tuple((str(q), str(c)) for q, c in pairing)
        except (TypeError, ValueError):
            raise ConfigError(
                f"pairing should be a name or a list of [query kind, caption kind] pairs, got {pairing!r}"
            ) from None
    if "lam" in out and isinstance(out["lam"], int) and not isinstance(out["lam"], bool):
        out["lam"] = float(out["lam"])
    if "tau" in out and isinstance(out["tau"], int) and not isinstance(out["tau"], bool):
        out["tau"] = float(out["tau"])
    if "tags" in out and out["tags"] is not None:
        out["tags"] = {str(k): str(v) for k, v in dict(out["tags"]).items()}
    return out


def from_dict(d: Mapping[str, Any], where: str = "config") -> ExperimentConfig:
    unknown = sorted(set(d) - _FIELD_NAMES)
    if unknown:
        raise ConfigError(
            f"{where}: unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_FIELD_NAMES))}"
        )
    try:
        return ExperimentConfig(**_normalise(d))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML config; `base: other.yaml` (relative to the file) is applied first."""
    data = _load_yaml_chain(Path(path))
    if overrides:
        data.update(overrides)
    return from_dict(data, where=str(path))


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    base = data.pop("base", None)
    if base is not None:
        merged = _load_yaml_chain(path.parent / base, (*seen, path.resolve()))
        merged.update(data)
        return merged
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is parsed as YAML (`m=3`, `lam=0.2`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} should look like key=value")
    return key.strip(), yaml.safe_load(raw)

