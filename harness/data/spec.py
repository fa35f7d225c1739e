"""The dataset registry: a `DatasetSpec` per split, saying how to load it and what it is.

A dataset is added by one module with one decorator (`register_dataset`) on its loader;
the spec carries everything other stages ask of a dataset: the evaluation protocol (a
name the evaluators register), the family whose splits share videos, whether it is
synthetic. Nothing else in the harness parses a dataset name.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import DataError
from harness.core.io import canonical_json, sha256_hex
from harness.core.query import Dataset, Query
from harness.core.registries import DATASETS

DATA_ENV = "GRANALIGN_DATA"

# a loader: (data root, split) -> (queries in file order, the file they came from)
Loader = Callable[[Path, str], tuple[Sequence[Query], str]]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered split.

    `protocol` names the evaluator (`qvhighlights`: the official QVHighlights metrics;
    `top1`: R1@{0.3,0.5,0.7} and mIoU); `family` groups splits that share videos (cache
    keys of videos use it); `synthetic` data needs no data root and its numbers mean
    nothing about the method, which every output says.
    """

    name: str
    family: str
    split: str
    loader: Loader
    protocol: str
    synthetic: bool = False
    description: str = ""
    submission: str = ""  # file name an evaluation server takes for this split ("" none)

    def load(self, root: str | os.PathLike[str] | None = None) -> Dataset:
        folder = Path(".") if self.synthetic else data_root(root)
        queries, source = self.loader(folder, self.split)
        queries = tuple(queries)
        if not queries:
            raise DataError(f"{source}: no queries in this annotation file (empty?); expected the "
                            f"{self.family} {self.split} annotations")
        _check_unique(queries, source)
        return Dataset(self.name, queries, source, self.family, self.split, self.synthetic)

    def __str__(self) -> str:
        kind = "SYNTHETIC, " if self.synthetic else ""
        return f"{kind}protocol {self.protocol}" + (f": {self.description}" if self.description else "")

    def describe(self) -> str:
        return str(self)




def register_dataset(
    family: str, splits: Sequence[str], protocol: str, synthetic: bool = False, description: str = "",
    submission: str = "",
) -> Callable[[Loader], Loader]:
    """Decorator: register `loader` for each split as `family:split`. `submission` is the
    file name (with `{split}`) an evaluation server takes for predictions of a split."""

    def deco(loader: Loader) -> Loader:
        for split in splits:
            name = f"{family}:{split}"
            DATASETS.register(name)(DatasetSpec(
                name, family, split, loader, protocol, synthetic, description,
                submission.format(split=split) if submission else "",
            ))
        return loader

    return deco


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a registered split; an unknown name lists the valid ones."""
    return DATASETS.get(name)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds the benchmark files (`$GRANALIGN_DATA`)."""
    value = root if root is not None else os.environ.get(DATA_ENV)
    if not value:
        raise DataError(
            f"no data root: set {DATA_ENV} to the folder holding qvhighlights/, charades_sta/ "
            "and activitynet/ (see README, 'Data'), or pass --data-root"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} ({DATA_ENV}) is not a directory")
    return path


def load_dataset(name: str, root: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a registered split by name, e.g. `qvhighlights:val`, `charades_sta:test`."""
    return dataset_spec(name).load(root)


def source_digest(dataset: Dataset) -> str:
    """sha256 (first 16 hex) of the split's annotation file: which ground truth a run used.
    A synthetic split (no file) is identified by its name and queries."""
    path = Path(dataset.source)
    if dataset.synthetic or not path.is_file():
        return sha256_hex(canonical_json([dataset.name, [q.qid for q in dataset.queries]]))[:16]
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _check_unique(queries: Sequence[Query], source: str) -> None:
    seen: set[int] = set()
    for q in queries:
        if q.qid in seen:
            raise DataError(f"{source}: query id {q.qid} appears twice")
        seen.add(q.qid)
