"""Benchmark datasets: one record type for a query, registered loaders, the data root.

Every loader turns its source format into `Query` records so that everything downstream
(cache builder, scoring, evaluators) sees one shape. Malformed input fails with the file,
the line (or key) and what was expected, because a silently skipped annotation changes
every metric.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.registry import Registry

DATA_ENV = "GRANALIGN_DATA"
CLIP_SECONDS = 2.0  # QVHighlights' clip grid: frame i covers [2i, 2i+2) s (0.5 fps)


class DataError(ValueError):
    """Bad or missing input data; the message names the file, line or id."""


@dataclass(frozen=True)
class Query:
    """One moment-retrieval query with its ground truth.

    `windows` are GT spans in seconds. `saliency` (QVHighlights only) maps clip id ->
    the annotators' scores (0-4 each); it feeds the highlight-detection metrics.
    """

    qid: int
    vid: str
    query: str
    duration: float
    windows: tuple[tuple[float, float], ...]
    saliency: dict[int, tuple[int, ...]] | None = field(default=None, compare=False)

    @property
    def n_clips(self) -> int:
        """Frames (2-s clips at 0.5 fps) that cover the whole video."""
        return n_clips(self.duration)

    def to_gt_row(self) -> dict[str, Any]:
        """The official QVHighlights GT jsonl row, for tools that expect that format."""
        row: dict[str, Any] = {
            "qid": self.qid,
            "query": self.query,
            "duration": self.duration,
            "vid": self.vid,
            "relevant_windows": [list(w) for w in self.windows],
        }
        if self.saliency is not None:
            row["relevant_clip_ids"] = list(self.saliency)
            row["saliency_scores"] = [list(s) for s in self.saliency.values()]
        return row


def n_clips(duration: float) -> int:
    """Clips of CLIP_SECONDS that cover `duration` (a partial last clip counts)."""
    import math

    return max(1, math.ceil(round(duration / CLIP_SECONDS, 6)))


@dataclass(frozen=True)
class Dataset:
    """A named split: its queries in file order and where they came from."""

    name: str
    queries: tuple[Query, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def videos(self) -> dict[str, float]:
        """vid -> duration, in first-seen order."""
        out: dict[str, float] = {}
        for q in self.queries:
            out.setdefault(q.vid, q.duration)
        return out

    def by_qid(self) -> dict[int, Query]:
        return {q.qid: q for q in self.queries}

    def subset(self, n: int) -> Dataset:
        """The first `n` queries: a quick look, or a CI-sized slice of a real split."""
        return Dataset(f"{self.name}[:{n}]", self.queries[:n], self.source)


DatasetLoader = Callable[[Path], Dataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


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
    loader = DATASETS.get(name)
    if name.startswith("demo"):
        return loader(Path("."))
    return loader(data_root(root))


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    return path


def iter_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line names file and line."""
    with open(_need(path), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"{where}: field {key!r} should be {names}, got {value!r:.80}")
    return value


def _windows(value: Any, where: str, key: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {key!r} should be a non-empty list of [start, end]")
    out = []
    for w in value:
        if (
            not isinstance(w, list | tuple)
            or len(w) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in w)
        ):
            raise DataError(f"{where}: field {key!r} has {w!r}, expected [start, end] in seconds")
        s, e = float(w[0]), float(w[1])
        if e < s:
            raise DataError(f"{where}: field {key!r} has window {w!r} that ends before it starts")
        out.append((s, e))
    return tuple(out)


def parse_qvhighlights_row(obj: dict[str, Any], where: str, require_gt: bool = True) -> Query:
    """One row of the official QVHighlights annotation jsonl."""
    qid = _field(obj, "qid", int, where)
    vid = _field(obj, "vid", str, where)
    query = _field(obj, "query", str, where)
    duration = float(_field(obj, "duration", (int, float), where))
    if duration <= 0:
        raise DataError(f"{where}: field 'duration' should be > 0, got {duration}")
    windows: tuple[tuple[float, float], ...] = ()
    saliency = None
    if require_gt or "relevant_windows" in obj:
        windows = _windows(obj.get("relevant_windows"), where, "relevant_windows")
    if "relevant_clip_ids" in obj or "saliency_scores" in obj:
        ids = _field(obj, "relevant_clip_ids", list, where)
        scores = _field(obj, "saliency_scores", list, where)
        if len(ids) != len(scores):
            raise DataError(
                f"{where}: relevant_clip_ids has {len(ids)} entries but saliency_scores has "
                f"{len(scores)}; expected one score triple per clip id"
            )
        saliency = _saliency(ids, scores, where)
    return Query(qid, vid, query, duration, windows, saliency)


def _saliency(ids: list[Any], scores: list[Any], where: str) -> dict[int, tuple[int, ...]]:
    """clip id -> annotator scores; a malformed entry names the row instead of a bare TypeError."""

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    out: dict[int, tuple[int, ...]] = {}
    for k, (i, s) in enumerate(zip(ids, scores, strict=True)):
        if not is_int(i) or i < 0:
            raise DataError(f"{where}: relevant_clip_ids[{k}] is {i!r:.40}, expected a clip index >= 0")
        if not isinstance(s, list) or not s or not all(is_int(x) for x in s):
            raise DataError(
                f"{where}: saliency_scores[{k}] is {s!r:.60}, expected a list of integer scores "
                "(one per annotator)"
            )
        out[i] = tuple(s)
    return out


def _qvhighlights(split: str) -> DatasetLoader:
    def load(root: Path) -> Dataset:
        path = root / "qvhighlights" / f"highlight_{split}_release.jsonl"
        # the public test split ships without GT: load it for prediction only
        queries = tuple(
            parse_qvhighlights_row(obj, f"{path}:{n}", require_gt=split != "test")
            for n, obj in iter_jsonl(path)
        )
        _check_unique(queries, path)
        return Dataset(f"qvhighlights:{split}", queries, str(path))

    return load


def _check_unique(queries: Iterable[Query], path: Path) -> None:
    seen: set[int] = set()
    for q in queries:
        if q.qid in seen:
            raise DataError(f"{path}: query id {q.qid} appears twice")
        seen.add(q.qid)


DATASETS.register("qvhighlights:val")(_qvhighlights("val"))
DATASETS.register("qvhighlights:test")(_qvhighlights("test"))


@DATASETS.register("charades_sta:test")
def load_charades_sta(root: Path) -> Dataset:
    """`VID start end##sentence` lines + durations from Charades_v1_test.csv.

    qid is the 0-based line index among non-blank lines: Charades-STA has no query ids and
    the same (vid, window) repeats with different sentences.
    """
    folder = root / "charades_sta"
    csv_path = _need(folder / "Charades_v1_test.csv")
    durations: dict[str, float] = {}
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"id", "length"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}:1: expected a header with columns 'id' and 'length'")
        for lineno, row in enumerate(reader, 2):
            try:
                durations[row["id"]] = float(row["length"])
            except (TypeError, ValueError):
                raise DataError(
                    f"{csv_path}:{lineno}: column 'length' should be seconds, got {row['length']!r}"
                ) from None
    txt_path = _need(folder / "charades_sta_test.txt")
    queries = []
    with open(txt_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{txt_path}:{lineno}"
            head, sep, sentence = line.rstrip("\n").partition("##")
            parts = head.split()
            if not sep or len(parts) != 3 or not sentence.strip():
                raise DataError(f"{where}: expected 'VID start end##sentence', got {line.strip()!r:.80}")
            vid = parts[0]
            try:
                s, e = float(parts[1]), float(parts[2])
            except ValueError:
                raise DataError(f"{where}: start and end should be seconds, got {parts[1:]!r}") from None
            if vid not in durations:
                raise DataError(f"{where}: video {vid!r} has no duration in {csv_path.name}")
            queries.append(
                Query(len(queries), vid, sentence.strip(), durations[vid], _windows([[s, e]], where, "window"))
            )
    return Dataset("charades_sta:test", tuple(queries), str(txt_path))


def _activitynet(split: str) -> DatasetLoader:
    def load(root: Path) -> Dataset:
        path = _need(root / "activitynet" / f"{split}.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected an object {{vid: {{duration, timestamps, sentences}}}}")
        queries = []
        for vid, rec in data.items():
            where = f"{path}: video {vid}"
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected an object with duration, timestamps, sentences")
            duration = float(_field(rec, "duration", (int, float), where))
            if duration <= 0:
                raise DataError(f"{where}: field 'duration' should be > 0, got {duration}")
            stamps = _field(rec, "timestamps", list, where)
            sentences = _field(rec, "sentences", list, where)
            if len(stamps) != len(sentences):
                raise DataError(
                    f"{where}: {len(stamps)} timestamps but {len(sentences)} sentences; expected one each"
                )
            for i, (w, sent) in enumerate(zip(stamps, sentences, strict=True)):
                if not isinstance(sent, str):
                    raise DataError(f"{where}: sentence {i} should be a string, got {sent!r:.60}")
                win = _windows([w], f"{where} sentence {i}", "timestamps")
                queries.append(Query(len(queries), vid, sent.strip(), duration, win))
        return Dataset(f"activitynet:{split}", tuple(queries), str(path))

    return load


@DATASETS.register("demo:val")
def load_demo(root: Path) -> Dataset:
    """The built-in SYNTHETIC demo (harness.demo): needs no data root."""
    from harness.demo import demo_dataset

    return demo_dataset()


DATASETS.register("activitynet:val_1")(_activitynet("val_1"))
DATASETS.register("activitynet:val_2")(_activitynet("val_2"))
