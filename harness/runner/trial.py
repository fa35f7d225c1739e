"""A run on cached outputs: config -> predictions -> metrics.

`trial(prep, cfg)` is the hot path the Optuna runner calls thousands of times: it takes
inputs already read from the cache (`Prepared`) and does only arithmetic, the MPG, NMS and
the evaluator. `InputPool` reads each (source, pair) once per process and serves every
later trial from memory. `run_config` is `granalign run`: everything the cache lacks is
reported before anything is computed, and outputs are written atomically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.cache import open_cache
from harness.cache.embedders import embedder_model_id
from harness.cache.store import Cache
from harness.config.experiment import ExperimentConfig
from harness.config.settings import Settings
from harness.core.errors import HarnessError
from harness.core.faults import fault_point
from harness.core.io import (
    atomic_write_text,
    folder_mode,
    follow_link,
    json_safe,
    remove_stale_temps,
    replace_folder,
    temp_prefix,
)
from harness.core.provenance import git_commit, package_versions
from harness.core.query import Dataset
from harness.core.registries import REWRITERS
from harness.core.results import Missing, MissingInputs
from harness.data.spec import dataset_spec, load_dataset
from harness.eval.protocols import PerQuery, protocol_of
from harness.eval.windows import Windows
from harness.method.kinds import Pair, SourceSpec
from harness.method.recipes import Predictions, predict
from harness.method.scoring import resolve_pairing
from harness.method.sources import Prepared, prepare
from harness.method.substitutions import Substitution, label, substitute_pairs


def embedder_models(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The model ids of the config's embedder (or of each member of its ensemble)."""
    single = len(cfg.embedders()) == 1
    return tuple(embedder_model_id({"type": m, "model": cfg.embedder_model if single else None,
                                    "dtype": cfg.embedder_dtype, "backend": backend})
                 for m, backend in zip(cfg.embedders(), cfg.embedder_backends(), strict=True))


def source_spec(cfg: ExperimentConfig) -> SourceSpec:
    """The cached inputs `cfg` names, with the components' default model ids filled in."""
    rewriter_model = cfg.rewriter_model or REWRITERS.get(cfg.rewriter).default_model_id()
    lexical = embedder_model_id(cfg.lexical_embedder) if cfg.lexical_weight > 0 else None
    return SourceSpec.from_config(cfg, embedder_models(cfg), rewriter_model, lexical)


def config_pairs(cfg: ExperimentConfig) -> tuple[Pair, ...]:
    return resolve_pairing(cfg.pairing)


class InputPool:
    """Prepared inputs per (source spec, pairs), read once, shared by all trials."""

    def __init__(self, cache: Cache, data_root: str | Path | None = None) -> None:
        self.cache = cache
        self.data_root = data_root
        self._datasets: dict[tuple[str, int | None], Dataset] = {}
        self._prepared: dict[tuple[SourceSpec, frozenset[Pair], str, int | None], Prepared] = {}
        self._missing: dict[tuple[SourceSpec, frozenset[Pair], str, int | None], MissingInputs] = {}

    def dataset(self, name: str, limit: int | None = None) -> Dataset:
        key = (name, limit)
        if key not in self._datasets:
            full = self._datasets.get((name, None)) or load_dataset(name, self.data_root)
            self._datasets[(name, None)] = full
            self._datasets[key] = full.subset(limit) if limit else full
        return self._datasets[key]

    def get(self, cfg: ExperimentConfig) -> Prepared:
        """Prepared inputs for `cfg`; raises MissingInputs (memoised) if the cache lacks any."""
        spec = source_spec(cfg)
        pairs = frozenset(config_pairs(cfg))
        key = (spec, pairs, cfg.cq_fallback, cfg.limit)
        if key in self._prepared:
            return self._prepared[key]
        if key in self._missing:
            raise self._missing[key]
        try:
            prep = prepare(self.cache, self.dataset(cfg.dataset, cfg.limit), spec, pairs, cfg.cq_fallback)
        except MissingInputs as e:
            self._missing[key] = e
            raise
        self._prepared[key] = prep
        return prep


class Pools:
    """One `InputPool` per cache a table or sweep reads: a synthetic dataset reads its own
    cache (built on first use), every other dataset the settings' cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pools: dict[str, InputPool] = {}

    def __call__(self, dataset: str) -> InputPool:
        spec = dataset_spec(dataset)
        key = spec.family if spec.synthetic else ""
        if key not in self._pools:
            cache = open_cache(dataset, self.settings.cache_dir, readonly=True)
            self._pools[key] = InputPool(cache, self.settings.data_root)
        return self._pools[key]


SUBSTITUTIONS_TAG = "granalign.substitutions"


def substituted(cfg: ExperimentConfig, subs: Sequence[Substitution]) -> ExperimentConfig | None:
    """`cfg` with its pairing rewritten by `subs` (and tagged so), or None if none applies."""
    pairs = cfg.pairs()
    new = substitute_pairs(pairs, subs)
    if new == pairs:
        return None
    return cfg.replace(pairing=[list(p) for p in new], tags={**cfg.tags, SUBSTITUTIONS_TAG: label(subs)})


def get_or_substitute(pool: InputPool, cfg: ExperimentConfig,
                      subs: Sequence[Substitution]) -> tuple[Prepared, ExperimentConfig]:
    """The inputs of `cfg`; when the cache lacks them and `subs` are declared, those of the
    substituted config (which is returned; its tags say so). Raises MissingInputs otherwise."""
    try:
        return pool.get(cfg), cfg
    except MissingInputs:
        alt = substituted(cfg, subs) if subs else None
        if alt is None:
            raise
        return pool.get(alt), alt


def score(prep: Prepared, cfg: ExperimentConfig, preds: Predictions, highlights: bool = True,
          per_query: PerQuery | None = None) -> dict[str, Any]:
    """Evaluate predicted arrays as their file would be evaluated (same rounding), with the
    ground truth's arrays built once per prepared split (`per_query`: see the protocols)."""
    protocol = protocol_of(cfg.dataset)
    gt = prep.memo(("ground truth", protocol.name), lambda: protocol.ground_truth(prep.queries))
    windows, scores, saliency = preds.as_written()
    return protocol.score(gt, Windows(windows, preds.valid, scores), saliency, preds.n_frames, highlights,
                          per_query=per_query)


def trial(prep: Prepared, cfg: ExperimentConfig, return_predictions: bool = False,
          highlights: bool = True, per_query: PerQuery | None = None) -> dict[str, Any]:
    """Metrics of one config on already-prepared inputs: no file reads, no embedding, no
    JSON (rows are built only with `return_predictions`). `highlights=False` skips the
    highlight metrics (a sweep or table that does not report them); `per_query` receives
    each metric's per-query values (what confidence intervals resample)."""
    preds = predict(prep, cfg)
    metrics = score(prep, cfg, preds, highlights, per_query)
    if return_predictions:
        return {"metrics": metrics, "predictions": preds.rows(prep.queries)}
    return metrics


def ground_truth_gap(dataset: Dataset) -> Missing | None:
    """`missing: ground truth (NAME)` for a split published without it (QVHighlights test)."""
    if dataset.has_ground_truth:
        return None
    lacking = sum(1 for q in dataset.queries if not q.windows)
    return Missing(f"ground truth ({dataset.name})", lacking, len(dataset), "queries",
                   "the benchmark keeps it hidden: submit the predictions to its evaluation server")


def run_config(
    cfg: ExperimentConfig,
    out_dir: str | Path | None = None,
    cache: Cache | None = None,
    data_root: str | Path | None = None,
    substitutions: Sequence[Substitution] = (),
) -> dict[str, Any]:
    """`granalign run`: read, predict, evaluate, write predictions + metrics + run info.

    On a split without ground truth nothing is evaluated: the predictions (and the file the
    benchmark's server takes, e.g. `hl_test_submission.jsonl`) are written, no metrics."""
    cache = cache or Cache(readonly=True)
    t0 = time.perf_counter()
    pool = InputPool(cache, data_root)
    prep, cfg = get_or_substitute(pool, cfg, substitutions)
    t_read = time.perf_counter() - t0
    no_gt = ground_truth_gap(pool.dataset(cfg.dataset, cfg.limit))
    preds = predict(prep, cfg)
    rows = preds.rows(prep.queries)
    metrics = None if no_gt else score(prep, cfg, preds)
    t_total = time.perf_counter() - t0
    out = Path(out_dir) if out_dir else Path("runs") / cfg.folder_name()
    info = {
        "name": cfg.name,
        "dataset": cfg.dataset,
        "synthetic": prep.synthetic,
        "config_hash": cfg.hash(),
        "cache_fingerprint": prep.fingerprint,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "seed": cfg.seed,
        "queries": len(prep.queries),
        "seconds": {"read": round(t_read, 3), "total": round(t_total, 3)},
        "metrics": str(no_gt) if no_gt else "metrics.json",
        "substitutions": cfg.tags.get(SUBSTITUTIONS_TAG, ""),
        "pairing": "+".join(f"{x}-{c}" for x, c in cfg.pairs()),
    }
    submission = dataset_spec(cfg.dataset).submission
    if submission:
        info["submission"] = submission
    write_outputs(out, cfg, rows, metrics, info, submission)
    return {"out": str(out), "metrics": metrics, "info": info, "missing": no_gt}


RUN_FILES = ("predictions.jsonl", "metrics.json", "config.yaml", "run_info.json")


def run_folder(out: Path) -> Path:
    """Where the run folder `out` really is: a symlink to a folder is followed (the run
    replaces the folder it names; the link stays); a link to nothing or to a file is refused."""
    if not out.is_symlink():
        return out
    target = follow_link(out)
    if not target.exists():
        raise HarnessError(f"{out}: a symlink to {target}, which does not exist; --out names the run's "
                           "folder (create the target, or give another path)")
    if not target.is_dir():
        raise HarnessError(f"{out}: a symlink to {target}, which is not a folder; --out names the run's folder")
    return target


def check_run_folder(out: Path) -> None:
    """`out` is new, or an earlier run folder (which a rerun replaces): never a file, nor a
    folder that holds anything else, which replacing it would delete."""
    out = run_folder(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise HarnessError(f"{out}: exists and is not a folder; --out names the run's folder")
    other = sorted(p.name for p in out.iterdir()
                   if p.name not in RUN_FILES and not re.fullmatch(r"hl_\w+_submission\.jsonl", p.name))
    if other:
        raise HarnessError(f"{out}: holds files that are not a run's ({', '.join(other[:3])}"
                           f"{', ...' if len(other) > 3 else ''}); --out must be a new folder or an earlier "
                           "run folder, which the run replaces")


def write_outputs(
    out: Path, cfg: ExperimentConfig, rows: Iterable[dict[str, Any]], metrics: dict[str, Any] | None,
    info: dict[str, Any], submission: str = "",
) -> None:
    """The run folder, complete or not at all: predictions (and the server's file), metrics
    when evaluated, config, info are written into a temp folder beside it, which is renamed
    into place (a full disk or a kill leaves no half-written run folder; the previous run
    folder of the same name stays until the new one is complete, and the temp folder a
    killed run left is removed by the next). Metrics that are not numbers (an empty split's
    NaN, as the official code gives) are written as null: strict JSON readers refuse NaN.
    An error names the run folder, not the temp folder."""
    check_run_folder(out)
    out = run_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(out.parent)) from None
    remove_stale_temps(out.parent, out.name)
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=temp_prefix(out.name), suffix=".tmp"))
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(out)) from None
    try:
        os.chmod(tmp, folder_mode())  # mkdtemp makes it 0o700
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_text(tmp / "predictions.jsonl", text)
        if submission:
            atomic_write_text(tmp / submission, text)
        if metrics is not None:
            atomic_write_text(tmp / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
        atomic_write_text(tmp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=True))
        atomic_write_text(tmp / "run_info.json", json.dumps(json_safe(info), indent=2, allow_nan=False) + "\n")
        fault_point("run:writing")  # tests kill here: a complete temp folder, not yet in place
        replace_folder(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.filename is not None and str(tmp) in str(e.filename):
            raise OSError(e.errno, e.strerror, str(e.filename).replace(str(tmp), str(out))) from None
        raise
