"""The experiment config: one frozen, typed object per run, with a stable hash.

A YAML file under `experiments/` fills it; ablation rows and sweeps apply overrides to it.
Everything is checked when the config is built, not deep inside a trial: unknown keys,
wrong types, every registered name and every range, each error naming the file, the key,
the value and what is valid.

Every field is declared once, with `param(...)`: its default, its role (what part of the
pipeline reads it), its check and its one-line doc. Everything else derives from those
declarations: the range and name checks, the fields the hash covers (`reads`), the MPG's
parameters (`values("mpg")`, passed by keyword), the curve memo keys (`values("curve")`)
and the MLflow params (`flat_params`). Adding a hyperparameter is one `param` here plus its
use in the method.

Roles:
- `input`: names cached inputs or which queries; always in the hash.
- `curve`: read when the score curves are made (Eq. 1, normalisation, candidates).
- `mpg`: the moment proposal generator's parameters (`harness.method.proposals.MPGParams`).
- `nms`: non-maximum suppression and how many windows are written.
- `run`: the run's name and tags; never in the hash.
A recipe may ignore some method fields (`Recipe.ignores`); a pairing makes the inputs of
kinds it does not use moot (`harness.method.kinds.pair_reads`). Neither is hashed.
"""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.cache.backbones import DEFAULT_BACKBONE
from harness.cache.embed_backends import BACKENDS, TORCH
from harness.cache.embedders import DTYPES, resolve_backend
from harness.cache.producers import instruction_pairs
from harness.config.files import load_yaml_with_base
from harness.core.constants import M_MAX, MAX_WINDOWS
from harness.core.errors import ConfigError, quote, shorten
from harness.core.io import canonical_json, sha256_hex
from harness.core.registries import (
    CAPTION_BACKBONES,
    DATASETS,
    EMBEDDERS,
    FRAME_FILTERS,
    NORMALISATIONS,
    PRUNERS,
    RECIPES,
    REWRITERS,
    SMOOTHERS,
    SPAN_SCORERS,
    load_all,
)
from harness.core.registry import Registry, RegistryError
from harness.core.yaml_io import parse_yaml
from harness.method.kinds import kind_fields, pair_reads
from harness.method.recipes import PROPOSAL_SOURCES
from harness.method.scoring import CQ_FALLBACKS, resolve_pairing

Pairing = str | tuple[tuple[str, str], ...]
MAX_BINS = 1000  # histogram bins per curve: more is memory, not resolution (frames per video << 1000)
ROLES = ("input", "curve", "mpg", "nms", "run")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_IN_FOLDER = re.compile(r"[^\w.+=-]+")


def param(
    default: Any,
    role: str,
    doc: str,
    check: Callable[[Any], bool] | None = None,
    expect: str = "",
    registry: Registry[Any] | None = None,
    choices: Callable[[], Any] | None = None,
    factory: bool = False,
    off: Any = None,
    only_with: str | None = None,
) -> Any:
    """One config field, declared once: default, role, doc, and how a value is checked (a
    predicate with the text of what is expected, a registry whose names it takes, or a
    function giving its valid values).

    A component beyond the paper is off by default: `off` is the value at which it changes
    nothing (a run at it is the computation without the component, and its hash is the
    hash from before the component existed); `only_with` names the field that switches on
    the component a field belongs to (read only when that field is not at its `off`)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    meta = {"role": role, "doc": doc, "check": check, "expect": expect, "registry": registry,
            "choices": choices, "off": off, "only_with": only_with}
    if factory:
        return field(default_factory=default, metadata=meta, compare=False)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides a run's numbers. Defaults follow METHOD.md (the paper)."""

    name: str = param("granalign", "run", "the run's name (its folder under runs/)",
                      check=lambda v: bool(v.strip()) and len(v) <= 200 and not _CONTROL.search(v),
                      expect="a non-empty name of at most 200 characters, without control characters")
    dataset: str = param("qvhighlights:val", "input", "benchmark split, family:split", registry=DATASETS)
    recipe: str = param("granalign", "input", "how curves become windows: granalign | vtg-gpt",
                        registry=RECIPES)
    # cached inputs
    captions: str = param(DEFAULT_BACKBONE, "input", "caption backbone: qwen2.5-vl | blip2 | minigptv2",
                          registry=CAPTION_BACKBONES)
    caption_model: str | None = param(None, "input", "caption model id; null: the backbone's")
    frame_filter: str = param("clip-vit-b32", "input", "frame filter that ranks candidate frames",
                              registry=FRAME_FILTERS)
    frame_filter_model: str | None = param(None, "input", "frame filter model id; null: the filter's")
    rewriter: str = param("hf-causal-lm", "input", "query rewriter (qs, qd)", choices=lambda: REWRITERS.names())
    rewriter_model: str | None = param(None, "input", "rewriter model id; null: the rewriter's own default")
    instruction_pair: int = param(1, "input", "rewrite instruction pair (Table 13)",
                                  choices=lambda: sorted(instruction_pairs()))
    embedder: str = param("minilm", "input", "sentence embedder, or an ensemble `a+b` (cosines averaged: "
                          "not the paper's)")
    embedder_model: str | None = param(None, "input", "embedder model id or folder; null: the embedder's")
    embedder_dtype: str = param("float32", "input", "embedder precision (part of the embeddings' key)",
                                choices=lambda: DTYPES)
    embedder_backend: str | None = param(
        None, "input", "embedder runtime: torch | onnx | onnx-int8 | openvino | openvino-int8 (part of "
        "the embeddings' key); null: the embedder's default (harness.cache.embed_backends)",
        choices=lambda: (None, *BACKENDS))
    # method
    pairing: Pairing = param("granalign", "curve", "(query kind, caption kind) pairs of Eq. 1")
    m: int = param(3, "curve", "rewrites per kind used (the builder caches 5)",
                   check=lambda v: 1 <= v <= M_MAX, expect=f"1 <= m <= {M_MAX} (the rewrites per kind the cache holds)")
    lam: float = param(0.3, "mpg", "Eq. 2: weight of the length share", check=lambda v: 0.0 <= v <= 1.0,
                       expect="0 <= lam <= 1")
    K: int = param(10, "curve", "percent of frames whose aware captions are used",
                   check=lambda v: 0 < v <= 100, expect="0 < K <= 100 (percent of frames)")
    gap: int = param(6, "mpg", "merge selected frames at most this many frames apart",
                     check=lambda v: v >= 0, expect="gap >= 0 (frames)")
    n: int = param(20, "mpg", "bottom-n% pruning", check=lambda v: 0 <= v < 100, expect="0 <= n < 100 (percent)")
    tau: float = param(0.9, "nms", "NMS: drop a span whose IoU with a kept one is at least tau",
                       check=lambda v: 0.0 < v <= 1.0, expect="0 < tau <= 1")
    top_k: int = param(8, "mpg", "histogram threshold: the top bins hold at least top_k frames",
                       check=lambda v: v >= 1, expect="top_k >= 1")
    bins: int = param(10, "mpg", "histogram bins over [0, 1]", check=lambda v: 1 <= v <= MAX_BINS,
                      expect=f"1 <= bins <= {MAX_BINS}")
    normalisation: str = param("minmax", "curve", "cosine -> [0, 1]: minmax | shift | raw",
                               registry=NORMALISATIONS)
    prune: str = param("frames", "mpg", "pruning rule: frames | merge | spans", registry=PRUNERS)
    span_score: str = param("granalign", "mpg", "Eq. 2 over the whole span (granalign) or the selected "
                            "frames (selected, VTG-GPT)", registry=SPAN_SCORERS)
    proposals_from: str = param("variants+mean", "curve", "curves the MPG runs on: variants+mean | mean",
                                choices=lambda: PROPOSAL_SOURCES)
    cq_fallback: str = param("ca", "curve", "a frame without an aware caption scores: ca | zero",
                             choices=lambda: CQ_FALLBACKS)
    # components beyond the paper: off by default, each a computation of its own when on
    lexical_weight: float = param(0.0, "curve", "NOT THE PAPER'S: weight of the lemma-bag cosine fused "
                                  "with the sentence cosine", check=lambda v: 0.0 <= v <= 1.0,
                                  expect="0 <= lexical_weight <= 1", off=0.0)
    lexical_embedder: str = param("lemmas", "input", "the lexical embedder lexical_weight fuses in",
                                  registry=EMBEDDERS, only_with="lexical_weight")
    smooth: str = param("none", "curve", "NOT THE PAPER'S: temporal context, none | box",
                        registry=SMOOTHERS, off="none")
    smooth_window: int = param(1, "curve", "frames on each side that `smooth` averages over",
                               check=lambda v: 1 <= v <= 50, expect="1 <= smooth_window <= 50",
                               only_with="smooth")
    max_windows: int = param(10, "nms", "windows written per query", check=lambda v: 1 <= v <= MAX_WINDOWS,
                             expect=f"1 <= max_windows <= {MAX_WINDOWS} (the official evaluator reads the first 10)")
    limit: int | None = param(None, "input", "first N queries only (quick looks, CI)", check=lambda v: v >= 1,
                              expect="limit >= 1 (first N queries) or null (all)")
    seed: int = param(0, "input", "seed (the method is deterministic; logged for provenance)",
                      check=lambda v: 0 <= v < 2**32, expect="0 <= seed < 2**32")
    tags: Mapping[str, str] = param(dict, "run", "free-form tags (MLflow)", factory=True)

    def __post_init__(self) -> None:
        load_all()  # every registry a field names is filled (each module imports once)
        for f in fields(self):
            value = getattr(self, f.name)
            _check_type(type(self), f.name, value)
            meta = f.metadata
            if meta["check"] is not None and value is not None and not meta["check"](value):
                raise ConfigError(f"key {f.name!r} = {quote(value)}: expected {meta['expect']}")
            if meta["registry"] is not None:
                _check_name(f.name, value, meta["registry"])
            if meta["choices"] is not None and value not in meta["choices"]():
                raise ConfigError(
                    f"key {f.name!r} = {quote(value)} is not valid; valid: {', '.join(map(str, meta['choices']()))}")
        members = self.embedders()
        for member in members:
            _check_name("embedder", member, EMBEDDERS)
        if len(members) > 1 and (self.embedder_model or self.embedder_backend):
            raise ConfigError(f"key 'embedder' = {quote(self.embedder)}: an ensemble uses each member's own "
                              "model and default backend (embedder_model and embedder_backend must be null)")
        try:
            self.embedder_backends()
        except ValueError as e:
            raise ConfigError(f"keys 'embedder_dtype', 'embedder_backend': {e}") from None
        try:
            resolve_pairing(self.pairing)
        except (RegistryError, ValueError) as e:
            raise ConfigError(f"key 'pairing' = {quote(self.pairing)}: {shorten(str(e))}") from None

    # -- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tags"] = dict(self.tags)
        if isinstance(self.pairing, tuple):
            d["pairing"] = [list(p) for p in self.pairing]
        return d

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return resolve_pairing(self.pairing)

    def embedders(self) -> tuple[str, ...]:
        """The embedder, or the members of an ensemble (`minilm+mpnet`)."""
        return tuple(m.strip() for m in self.embedder.split("+"))

    def embedder_backends(self) -> tuple[str, ...]:
        """The backend each embedder runs (None resolved to its default)."""
        single = len(self.embedders()) == 1
        return tuple(resolve_backend(m, self.embedder_dtype, self.embedder_backend if single else None,
                                     self.embedder_model if single else None) for m in self.embedders())

    def values(self, role: str) -> dict[str, Any]:
        """The fields of one role, by name: what a stage of the method is given (keyword
        arguments, never positions)."""
        return {name: getattr(self, name) for name in fields_of(role, type(self))}

    def reads(self) -> frozenset[str]:
        """The fields that can change this config's numbers: the inputs and the method
        fields, minus those its recipe ignores and the inputs of kinds its pairing does not
        use (no `Cq`: no frame filter, K or fallback; no `qs`/`qd`: no rewriter; only `q`:
        no `m`)."""
        method = {n for role in ("curve", "mpg", "nms") for n in fields_of(role, type(self))}
        read = (set(fields_of("input", type(self))) | method) - RECIPES.get(self.recipe).ignores
        return frozenset(read - (_CONDITIONAL - pair_reads(self.pairs())))

    def folder_name(self) -> str:
        """`<name>-<hash>` as one safe path component (the run's folder under `runs/`): a
        name with '/', '..' or spaces cannot make a run write outside its folder."""
        safe = _UNSAFE_IN_FOLDER.sub("_", self.name).strip("._") or "run"
        safe = safe.encode("utf-8")[:120].decode("utf-8", "ignore")  # file names are <= 255 bytes
        return f"{safe}-{self.hash()}"

    def hash(self) -> str:
        """sha256 (first 16 hex) over the fields that can change this config's numbers
        (`reads`), with the pairing as its resolved pairs (`granalign` = `qs-Ca+qd-Cq`)."""
        d = {k: v for k, v in self.to_dict().items() if k in self.reads() and not self._is_off(k)}
        d["pairing"] = [list(p) for p in self.pairs()]
        # the embedder backend that runs (None resolved), and none named for torch: the
        # hashes of configs written before backends existed stay what they were
        backends = self.embedder_backends()
        d.pop("embedder_backend", None)
        if any(b != TORCH for b in backends):
            d["embedder_backend"] = backends[0] if len(backends) == 1 else list(backends)
        return sha256_hex(canonical_json(d))[:16]

    def _is_off(self, name: str) -> bool:
        """A field of a component that is off: it changes nothing, so the hash leaves it out."""
        meta = _metadata(type(self))[name]
        if meta["only_with"] is not None:
            return self._is_off(meta["only_with"])
        return meta["off"] is not None and getattr(self, name) == meta["off"]

    def replace(self, **overrides: Any) -> ExperimentConfig:
        return from_dict({**self.to_dict(), **overrides}, cls=type(self))

    def flat_params(self) -> dict[str, str]:
        """String params for MLflow (immutable, one per field but the tags)."""
        out = {}
        for k, v in self.to_dict().items():
            if k == "tags":
                continue
            out[k] = canonical_json(v) if isinstance(v, list | dict) else str(v)
        return out


@functools.cache
def _metadata(cls: type) -> dict[str, Any]:
    """Each field's declaration (its `param` metadata), by name, once per config class."""
    return {f.name: f.metadata for f in fields(cls)}


@functools.cache
def fields_of(role: str, cls: type | None = None) -> tuple[str, ...]:
    """The config fields of one role, in declaration order (of `cls`, a config class)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    return tuple(f.name for f in fields(cls or ExperimentConfig) if f.metadata["role"] == role)


def describe_fields() -> list[tuple[str, str, Any, str]]:
    """(name, role, default, doc) of every field: the config's reference."""
    out = []
    for f in fields(ExperimentConfig):
        default = f.default_factory() if f.default_factory is not field().default_factory else f.default  # type: ignore[misc]
        out.append((f.name, f.metadata["role"], default, f.metadata["doc"]))
    return out


# fields whose only reader is a query or caption kind (moot when the pairing lacks it)
_CONDITIONAL = kind_fields()


def _check_name(key: str, value: str, registry: Registry[Any]) -> None:
    if value not in registry:
        raise ConfigError(
            f"key {key!r} = {quote(value)} is not a registered {registry.kind}; valid: {', '.join(registry.names())}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations, once per class: every config (and every sweep trial's) is checked."""
    return typing.get_type_hints(cls)


def _check_type(cls: type, name: str, value: Any) -> None:
    tp = _field_types(cls)[name]
    if not _matches(value, tp):
        raise ConfigError(f"config field {name!r} should be {_type_name(tp)}, got {quote(value, 80)}")


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
                f"pairing should be a name or a list of [query kind, caption kind] pairs, got {quote(pairing)}"
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


def from_dict(d: Mapping[str, Any], where: str = "config", cls: type[ExperimentConfig] | None = None) -> ExperimentConfig:
    cls = cls or ExperimentConfig
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**_normalise(d))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML run config; its `base: other.yaml` (relative to the file) first."""
    data = load_yaml_with_base(Path(path), "config")
    if overrides:
        data.update(overrides)
    return from_dict(data, where=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is parsed as YAML (`m=3`, `lam=0.2`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {quote(text)} should look like key=value")
    return key.strip(), parse_yaml(raw, f"override {quote(text, 80)}")

