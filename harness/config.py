"""The experiment config: one frozen, typed object per run, with a stable hash.

A YAML file under `experiments/` fills it; ablation rows and sweeps apply overrides to it.
Everything is checked when the config is built, not deep inside a trial: unknown keys,
wrong types, every registered name (dataset, recipe, pairing, normalisation, pruning rule,
span scorer, embedder, caption backbone, frame filter, rewriter) and every range, each
error naming the file, the key, the value and what is valid.

The hash covers the inputs (dataset, cached sources, embedder) and the method fields the
recipe declares it reads (`Recipe.reads`), so two configs that differ only in a field the
recipe ignores are one computation with one cached result.
"""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.build.backends import FRAME_FILTERS, REWRITERS
from harness.cache.embed_backends import BACKENDS, TORCH
from harness.cache.embedders import DTYPES, EMBEDDERS, resolve_backend
from harness.cache.producers import captioners, instruction_pairs
from harness.core.constants import M_MAX, MAX_WINDOWS
from harness.core.errors import ConfigError
from harness.core.io import canonical_json, sha256_hex
from harness.core.registry import Registry, RegistryError
from harness.core.yaml_io import load_yaml, parse_yaml
from harness.data.spec import DATASETS
from harness.method.proposals import PRUNERS, SPAN_SCORERS
from harness.method.recipes import PROPOSAL_SOURCES, RECIPES
from harness.method.scoring import CQ_FALLBACKS, NORMALISATIONS, resolve_pairing

Pairing = str | tuple[tuple[str, str], ...]
MAX_BINS = 1000  # histogram bins per curve: more is memory, not resolution (frames per video << 1000)
# the fields that name inputs (or say which queries): always part of the hash
INPUT_FIELDS = frozenset({
    "dataset", "recipe", "captions", "caption_model", "frame_filter", "frame_filter_model",
    "rewriter", "rewriter_model", "instruction_pair", "embedder", "embedder_model", "embedder_dtype",
    "embedder_backend",
    "limit", "seed",
})


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
    rewriter_model: str | None = None  # None: the rewriter's own default (LLaMA-3-8B-Instruct, ...)
    instruction_pair: int = 1
    embedder: str = "minilm"
    embedder_model: str | None = None
    embedder_dtype: str = "float32"  # float32 | bfloat16 (part of the embeddings' cache key)
    # torch | onnx | onnx-int8 | openvino | openvino-int8 (part of the cache key); None: the
    # embedder's default backend (harness.cache.embed_backends)
    embedder_backend: str | None = None
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
        for key, ok, expected in _RANGES:
            value = getattr(self, key)
            if value is not None and not ok(value):
                raise ConfigError(f"key {key!r} = {value!r}: expected {expected}")
        for key, registry in _NAMED.items():
            _check_name(key, getattr(self, key), registry)
        for key, choices in _CHOICES.items():
            value = getattr(self, key)
            if value not in choices():
                raise ConfigError(
                    f"key {key!r} = {value!r} is not valid; valid: {', '.join(map(str, choices()))}")
        try:
            resolve_backend(self.embedder, self.embedder_dtype, self.embedder_backend, self.embedder_model)
        except ValueError as e:
            raise ConfigError(f"keys 'embedder_dtype', 'embedder_backend': {e}") from None
        try:
            resolve_pairing(self.pairing)
        except (RegistryError, ValueError) as e:
            raise ConfigError(f"key 'pairing' = {self.pairing!r}: {e}") from None

    # -- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tags"] = dict(self.tags)
        if isinstance(self.pairing, tuple):
            d["pairing"] = [list(p) for p in self.pairing]
        return d

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return resolve_pairing(self.pairing)

    def reads(self) -> frozenset[str]:
        """The fields that can change this config's numbers: the inputs, the fields its
        recipe reads, minus those its pairing makes moot (no `Cq`: no frame filter, K or
        fallback; no `qs`/`qd`: no rewriter; only `q`: no `m`)."""
        read = set(INPUT_FIELDS | RECIPES.get(self.recipe).reads)
        kinds = {k for pair in self.pairs() for k in pair}
        if "Cq" not in kinds:
            read -= {"frame_filter", "frame_filter_model", "K", "cq_fallback"}
        if not kinds & {"qs", "qd"}:
            read -= {"rewriter", "rewriter_model", "instruction_pair"}
        if not kinds & {"qs", "qd", "qp"}:
            read -= {"m"}
        return frozenset(read)

    def folder_name(self) -> str:
        """`<name>-<hash>` as one safe path component (the run's folder under `runs/`): a
        name with '/', '..' or spaces cannot make a run write outside its folder."""
        safe = _UNSAFE_IN_FOLDER.sub("_", self.name).strip("._") or "run"
        safe = safe.encode("utf-8")[:120].decode("utf-8", "ignore")  # file names are <= 255 bytes
        return f"{safe}-{self.hash()}"

    def hash(self) -> str:
        """sha256 (first 16 hex) over the fields that can change this config's numbers
        (`reads`), with the pairing as its resolved pairs (`granalign` = `qs-Ca+qd-Cq`)."""
        d = {k: v for k, v in self.to_dict().items() if k in self.reads()}
        d["pairing"] = [list(p) for p in self.pairs()]
        # the backend that runs (None resolved), and none named for torch: the hashes of
        # configs written before backends existed stay what they were
        backend = resolve_backend(self.embedder, self.embedder_dtype, self.embedder_backend, self.embedder_model)
        d.pop("embedder_backend", None)
        if backend != TORCH:
            d["embedder_backend"] = backend
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

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_IN_FOLDER = re.compile(r"[^\w.+=-]+")
# (key, check, what is expected) for every numeric field (and the run name)
_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("m", lambda v: 1 <= v <= M_MAX, f"1 <= m <= {M_MAX} (the rewrites per kind the cache holds)"),
    ("lam", lambda v: 0.0 <= v <= 1.0, "0 <= lam <= 1"),
    ("K", lambda v: 0 < v <= 100, "0 < K <= 100 (percent of frames)"),
    ("gap", lambda v: v >= 0, "gap >= 0 (frames)"),
    ("n", lambda v: 0 <= v < 100, "0 <= n < 100 (percent)"),
    ("tau", lambda v: 0.0 < v <= 1.0, "0 < tau <= 1"),
    ("top_k", lambda v: v >= 1, "top_k >= 1"),
    ("bins", lambda v: 1 <= v <= MAX_BINS, f"1 <= bins <= {MAX_BINS}"),
    ("max_windows", lambda v: 1 <= v <= MAX_WINDOWS,
     f"1 <= max_windows <= {MAX_WINDOWS} (the official evaluator reads the first 10)"),
    ("limit", lambda v: v >= 1, "limit >= 1 (first N queries) or null (all)"),
    ("seed", lambda v: 0 <= v < 2**32, "0 <= seed < 2**32"),
    ("name", lambda v: bool(v.strip()) and len(v) <= 200 and not _CONTROL.search(v),
     "a non-empty name of at most 200 characters, without control characters"),
)

# key -> the registry whose names it takes
_NAMED: dict[str, Registry[Any]] = {
    "dataset": DATASETS, "recipe": RECIPES, "normalisation": NORMALISATIONS, "prune": PRUNERS,
    "span_score": SPAN_SCORERS, "embedder": EMBEDDERS, "frame_filter": FRAME_FILTERS,
}
# key -> its valid values (functions: read when checked, after every module registered)
_CHOICES: dict[str, Any] = {
    "captions": lambda: sorted(captioners()),
    "rewriter": lambda: REWRITERS.names(),
    "instruction_pair": lambda: sorted(instruction_pairs()),
    "proposals_from": lambda: PROPOSAL_SOURCES,
    "cq_fallback": lambda: CQ_FALLBACKS,
    "embedder_dtype": lambda: DTYPES,
    "embedder_backend": lambda: (None, *BACKENDS),
}


def _check_name(key: str, value: str, registry: Registry[Any]) -> None:
    if value not in registry:
        raise ConfigError(
            f"key {key!r} = {value!r} is not a registered {registry.kind}; valid: {', '.join(registry.names())}")


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
        if not isinstance(out["tags"], Mapping):
            raise ConfigError(f"key 'tags' should be a mapping of tag: value, got {out['tags']!r:.80}")
        out["tags"] = {str(k): str(v) for k, v in out["tags"].items()}
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
    data = load_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of config keys")
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
    return key.strip(), parse_yaml(raw, f"override {text!r}")

