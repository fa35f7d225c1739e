"""Importers for public caches: model outputs someone else already computed.

The VTG-GPT release ships MiniGPT-v2 frame captions and Baichuan2 paraphrases for
QVHighlights val. No video or captioner is available offline, so these files are the only
captions a run can use; importing them under the same producer keys a builder would write
(`harness/producers.py`) lets every run read them as if they had been built here.

Importers validate what they read (a silently skipped or misaligned caption shifts every
frame score), write through `Cache.put_many` in batches (one transaction each) and skip
items that are already cached, so an interrupted import resumes where it stopped.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness.cache.backbones import importable_backbones
from harness.cache.producers import (
    caption_producer,
    paraphrase_producer,
    query_item,
    video_item,
)
from harness.cache.store import Cache, Producer
from harness.core.errors import DataError, quote
from harness.core.query import Dataset, Query, n_clips
from harness.data.parsing import iter_jsonl, need_file
from harness.data.spec import data_root

PARAPHRASES_PER_QUERY = 5  # the VTG-GPT release has five Baichuan2 paraphrases per query
DEFAULT_BATCH = 256  # entries per transaction: small enough to resume, big enough to be fast
MAX_CLIP_MISMATCH = 2  # captions vs clips beyond this means the wrong file, not a short video


def caption_folder(root: Path, dataset: Dataset, backbone: str) -> Path:
    """`<root>/<family>/captions/<backbone>/<split>/`, one `<vid>.jsonl` per video."""
    return root / dataset.family / "captions" / backbone / dataset.split


def paraphrase_file(root: Path, dataset: Dataset) -> Path:
    return root / dataset.family / "queries" / f"baichuan2_paraphrases_{dataset.split}.jsonl"


@dataclass
class ImportReport:
    """What an import did; `lines()` is what `granalign cache import` prints."""

    what: str
    dataset: str
    producer: Producer
    source: str
    cache: str
    unit: str  # "videos" | "queries"
    needed: int = 0  # items of the dataset (unique keys)
    imported: int = 0
    already_cached: int = 0
    missing: list[str] = field(default_factory=list)  # ids with no source record
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what, "dataset": self.dataset, "stage": self.producer.stage,
            "backend": self.producer.backend, "model": self.producer.model,
            "source": self.source, "cache": self.cache, "unit": self.unit,
            "needed": self.needed, "imported": self.imported,
            "already_cached": self.already_cached, "missing": list(self.missing),
            "counts": dict(self.counts), "notes": list(self.notes), "seconds": self.seconds,
        }

    def lines(self) -> list[str]:
        p = self.producer
        out = [
            f"imported {self.what} for {self.dataset} into {self.cache} ({self.seconds:.1f} s)",
            f"  producer: {p.stage} / {p.backend} / {p.model}",
            f"  source:   {self.source}",
            f"  {self.unit}: {self.needed} needed, {self.imported} imported, "
            f"{self.already_cached} already cached, {len(self.missing)} without a source record",
        ]
        if self.missing:
            shown = ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
            out.append(f"  missing {self.unit}: {shown}")
        for k, v in self.counts.items():
            out.append(f"  {k.replace('_', ' ')}: {v}")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def _batches(seq: Sequence[int], n: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _progress(total: int, desc: str, unit: str, enabled: bool) -> Any:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


# -- captions -----------------------------------------------------------------------------
def blank(text: str) -> bool:
    """No visible character: empty, whitespace, or only invisible format characters (a
    zero-width space is not whitespace to `str.strip`, and embeds as nothing)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cf", "Cc", "Zs", "Zl", "Zp") for c in text)


def fill_blanks(captions: list[str]) -> tuple[list[str], int]:
    """Blank captions replaced by the nearest earlier caption (the first ones by the first
    non-blank one): a clip described as nothing would be embedded as empty text and score
    as noise. The captions, and how many were blank."""
    out, n = list(captions), 0
    last = next((c for c in captions if not blank(c)), "")
    for i, c in enumerate(out):
        if blank(c):
            out[i] = last
            n += 1
        else:
            last = c
    return out, n


def read_caption_file(path: Path) -> list[str]:
    """Captions of one video in clip order, after checking moments are 0..k-1 exactly once.

    Lines may come in any order; a duplicate or missing moment is an error naming the file
    and line, because a gap would silently shift every later caption onto the wrong clip.
    """
    rows: list[tuple[int, int, str]] = []  # (moment, line, description)
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        moment = obj.get("moment")
        if not isinstance(moment, int) or isinstance(moment, bool) or moment < 0:
            raise DataError(f"{where}: field 'moment' should be an integer >= 0, got {moment!r:.60}")
        if "description" not in obj:
            raise DataError(f"{where}: missing field 'description' (the caption text)")
        desc = obj["description"]
        if not isinstance(desc, str):
            raise DataError(f"{where}: field 'description' should be a string, got {desc!r:.60}")
        rows.append((moment, lineno, desc))
    if not rows:
        raise DataError(f"{path}: no captions (expected one line per 2-s clip)")
    if all(blank(desc) for _, _, desc in rows):
        raise DataError(f"{path}: every description is empty (expected the caption text of each clip)")
    rows.sort()
    for expected, (moment, lineno, _) in enumerate(rows):
        if moment == expected:
            continue
        if expected > 0 and moment == rows[expected - 1][0]:
            raise DataError(
                f"{path}:{lineno}: moment {moment} appears twice (also line "
                f"{rows[expected - 1][1]}); expected each moment 0..{len(rows) - 1} once"
            )
        raise DataError(
            f"{path}:{lineno}: moment {expected} is missing (next is {moment}); expected "
            f"contiguous moments 0..{len(rows) - 1}"
        )
    return [desc for _, _, desc in rows]


def fit_captions(
    captions: list[str], clips: int, where: str, max_mismatch: int = MAX_CLIP_MISMATCH
) -> tuple[list[str], dict[str, int]]:
    """One caption per clip: pad a short set with its last caption, cut a long one.

    The cache's value is `[str] * n_frames` (frame i <-> clip i). Fewer captions than clips
    (the release misses the partial last clip of some videos) are padded by repeating the
    last caption, the nearest frame in time; extra captions would describe time past the
    video's annotated duration, so they are dropped. Both are recorded in `meta`. A gap
    larger than `max_mismatch` clips means a caption file of another clip, and is an error.
    """
    k = len(captions)
    if abs(k - clips) > max_mismatch:
        raise DataError(
            f"{where}: {k} captions for a video of {clips} clips; expected {clips} "
            f"(within {max_mismatch}); is this the caption file of another clip?"
        )
    meta = {"source_count": k}
    if k < clips:
        meta["padded"] = clips - k
        return captions + [captions[-1]] * (clips - k), meta
    if k > clips:
        meta["dropped"] = k - clips
        return captions[:clips], meta
    return captions, meta


def video_clips(dataset: Dataset) -> dict[str, int]:
    """vid -> clips; queries of one video must agree on its duration."""
    out: dict[str, int] = {}
    first: dict[str, Query] = {}
    for q in dataset.queries:
        n = n_clips(q.duration)
        if q.vid in out and out[q.vid] != n:
            p = first[q.vid]
            raise DataError(
                f"{dataset.source}: video {q.vid} has duration {p.duration} in qid {p.qid} but "
                f"{q.duration} in qid {q.qid}; expected one duration per video"
            )
        out.setdefault(q.vid, n)
        first.setdefault(q.vid, q)
    return out


def import_captions(
    cache: Cache,
    dataset: Dataset,
    backbone: str = "minigptv2",
    root: str | Path | None = None,
    folder: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    max_mismatch: int = MAX_CLIP_MISMATCH,
    progress: bool = True,
) -> ImportReport:
    """Import a released folder of agnostic captions (`<vid>.jsonl` per video).

    Videos already cached are skipped unread; videos with no caption file are counted and
    listed in the report, not an error (a run then says which videos lack captions).
    """
    t0 = time.perf_counter()
    check_importable(backbone)
    producer = caption_producer(backbone, "agnostic")
    src = Path(folder) if folder is not None else caption_folder(data_root(root), dataset, backbone)
    if not src.is_dir():
        raise DataError(f"caption folder {src} not found (expected <vid>.jsonl files for {dataset.label})")
    clips = video_clips(dataset)
    vids = list(clips)
    items = [video_item(dataset.family, v) for v in vids]
    todo = cache.missing(producer, items)
    report = ImportReport(
        f"captions:{backbone}", dataset.label, producer, str(src), str(cache.root), "videos",
        needed=len(vids), already_cached=len(vids) - len(todo),
    )
    c = dict.fromkeys(
        ("captions_read", "frames_stored", "videos_padded", "frames_padded",
         "videos_truncated", "captions_dropped", "videos_with_blank_captions", "blank_captions_filled"), 0,
    )
    with _progress(len(todo), f"import {backbone} captions", "video", progress) as bar:
        for batch in _batches(todo, batch_size):
            rows: list[tuple[dict[str, Any], Any, str, dict[str, Any]]] = []
            for i in batch:
                vid = vids[i]
                path = src / f"{vid}.jsonl"
                if not path.is_file():
                    report.missing.append(vid)
                    continue
                captions, blanks = fill_blanks(read_caption_file(path))
                value, meta = fit_captions(captions, clips[vid], str(path), max_mismatch)
                if blanks:
                    meta["blank_filled"] = blanks
                    c["videos_with_blank_captions"] += 1
                    c["blank_captions_filled"] += blanks
                c["captions_read"] += meta["source_count"]
                c["frames_stored"] += len(value)
                if "padded" in meta:
                    c["videos_padded"] += 1
                    c["frames_padded"] += meta["padded"]
                if "dropped" in meta:
                    c["videos_truncated"] += 1
                    c["captions_dropped"] += meta["dropped"]
                rows.append((items[i], value, "ok", meta))
            if rows:
                cache.put_many(producer, rows)
            report.imported += len(rows)
            bar.update(len(batch))
    report.counts = c
    if c["blank_captions_filled"]:
        report.notes.append(
            f"{c['blank_captions_filled']} descriptions in {c['videos_with_blank_captions']} caption files were empty, "
            "whitespace or invisible characters only; each was replaced by the caption of the nearest earlier clip "
            "(an empty text embeds as noise)")
    if report.already_cached:
        report.notes.append(
            f"{report.already_cached} videos were already cached and were not re-read; "
            "caption counts cover this run's videos only"
        )
    strangers = sorted(p.stem for p in src.glob("*.jsonl") if p.stem not in clips)
    if strangers:
        report.notes.append(
            f"{len(strangers)} caption files are for videos not in {dataset.label} and were not imported "
            f"(e.g. {', '.join(strangers[:3])}): a folder of another split?")
    report.seconds = time.perf_counter() - t0
    return report


# -- paraphrases --------------------------------------------------------------------------
@dataclass(frozen=True)
class ParaphraseRow:
    qid: int
    query: str
    paraphrases: tuple[str, ...]
    line: int


def read_paraphrase_file(path: Path) -> dict[int, ParaphraseRow]:
    """qid -> row; each row must have qid, query and `rephrased_query` of 5 strings."""
    rows: dict[int, ParaphraseRow] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        qid = obj.get("qid")
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise DataError(f"{where}: field 'qid' should be an integer, got {qid!r:.60}")
        query = obj.get("query")
        if not isinstance(query, str):
            raise DataError(f"{where}: field 'query' should be a string, got {query!r:.60}")
        para = obj.get("rephrased_query")
        problem = paraphrase_problem(para)
        if problem:
            raise DataError(f"{where}: field 'rephrased_query' {problem}; expected a list of "
                            f"{PARAPHRASES_PER_QUERY} non-empty strings")
        if qid in rows:
            raise DataError(f"{where}: qid {qid} appears twice (also line {rows[qid].line})")
        rows[qid] = ParaphraseRow(qid, query, tuple(para), lineno)
    return rows


def paraphrase_problem(para: Any) -> str:
    """What is wrong with a row's `rephrased_query` ('' when nothing): said exactly, since
    the value itself is cut in the message."""
    if not isinstance(para, list):
        return f"is {type(para).__name__} {quote(para, 60)}"
    if len(para) != PARAPHRASES_PER_QUERY:
        return f"has {len(para)} paraphrases"
    for i, p in enumerate(para, 1):
        if not isinstance(p, str):
            return f"paraphrase {i} of {len(para)} is {type(p).__name__} {quote(p, 60)}, not a string"
        if blank(p):
            return f"paraphrase {i} of {len(para)} is empty ({quote(p, 40)})"
    return ""


def import_paraphrases(
    cache: Cache,
    dataset: Dataset,
    root: str | Path | None = None,
    path: str | Path | None = None,
    strict_qids: bool = True,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
) -> ImportReport:
    """Import the Baichuan2 paraphrases as `{"qp": [5 str]}` variants of each query.

    Rows are matched to the dataset by qid and must carry the dataset's exact query text
    (the cache key is the text). A qid the dataset does not have is an error unless
    `strict_qids=False` (importing for a subset of a split). Queries that share a text share
    one cache entry: the first such query in dataset order supplies the paraphrases, the
    others are counted and named in the report.
    """
    t0 = time.perf_counter()
    producer = paraphrase_producer()
    src = Path(path) if path is not None else paraphrase_file(data_root(root), dataset)
    rows = read_paraphrase_file(src)
    by_qid = dataset.by_qid()
    unknown = [r for r in rows.values() if r.qid not in by_qid]
    if unknown and strict_qids:
        r = unknown[0]
        raise DataError(
            f"{src}:{r.line}: qid {r.qid} is not a query of {dataset.label} ({dataset.source}); "
            f"{len(unknown)} such rows. Is this the paraphrase file of another split?"
        )
    for r in rows.values():
        q = by_qid.get(r.qid)
        if q is not None and q.query != r.query:
            raise DataError(
                f"{src}:{r.line}: qid {r.qid} has query {r.query!r} but {dataset.label} has "
                f"{q.query!r}; expected the same text (the cache key is the query text)"
            )
    keyed: dict[str, tuple[Query, ParaphraseRow, list[int]]] = {}
    missing: list[str] = []
    for q in dataset.queries:
        row = rows.get(q.qid)
        if row is None:
            missing.append(str(q.qid))
            continue
        if q.query in keyed:
            keyed[q.query][2].append(q.qid)
        else:
            keyed[q.query] = (q, row, [])
    entries = list(keyed.values())
    items = [query_item(q) for q, _, _ in entries]
    todo = cache.missing(producer, items)
    report = ImportReport(
        "paraphrases", dataset.label, producer, str(src), str(cache.root), "queries",
        needed=len(entries), already_cached=len(entries) - len(todo), missing=missing,
    )
    with _progress(len(todo), "import paraphrases", "query", progress) as bar:
        for batch in _batches(todo, batch_size):
            put = []
            for i in batch:
                q, row, shared = entries[i]
                meta: dict[str, Any] = {"qid": q.qid, "source_line": row.line}
                if shared:
                    meta["shared_with_qids"] = shared
                put.append((items[i], {"qp": list(row.paraphrases)}, "ok", meta))
            cache.put_many(producer, put)
            report.imported += len(put)
            bar.update(len(batch))
    shared_qids = [qid for _, _, s in entries for qid in s]
    report.counts = {
        "rows_read": len(rows),
        "rows_matched": len(rows) - len(unknown),
        "rows_not_in_dataset": len(unknown),
        "paraphrases_read": sum(len(r.paraphrases) for r in rows.values()),
        "paraphrases_stored": PARAPHRASES_PER_QUERY * report.imported,
        "queries_sharing_a_text": len(shared_qids),
    }
    if shared_qids:
        report.notes.append(
            f"qids {', '.join(map(str, shared_qids))} repeat the text of an earlier query; the "
            "cache keys paraphrases by query text, so they read the earlier query's paraphrases"
        )
    report.seconds = time.perf_counter() - t0
    return report


# -- dispatch -----------------------------------------------------------------------------
IMPORT_TARGETS = ("captions:<backbone>", "paraphrases")


def check_importable(backbone: str) -> None:
    """A caption backbone with a public release (e.g. minigptv2), or a ValueError listing them."""
    if backbone not in importable_backbones():
        raise ValueError(
            f"caption backbone {backbone!r} has no public release to import; importable: "
            f"{', '.join(importable_backbones())} (`imported = True` in harness/cache/backbones.py)"
        )


def import_source(dataset: Dataset, what: str, root: str | Path | None = None) -> Path:
    """The release file or folder an import reads, checked to exist (before any cache is
    opened: a failed import leaves no empty cache behind)."""
    kind, _, arg = what.partition(":")
    if kind == "captions":
        check_importable(arg or "minigptv2")
        src = caption_folder(data_root(root), dataset, arg or "minigptv2")
        if not src.is_dir():
            raise DataError(f"caption folder {src} not found (expected <vid>.jsonl files for {dataset.label})")
        return src
    if kind == "paraphrases" and not arg:
        return need_file(paraphrase_file(data_root(root), dataset))
    raise ValueError(f"unknown import target {what!r}; valid: {', '.join(IMPORT_TARGETS)}")


def run_import(
    cache: Cache,
    dataset: Dataset,
    what: str,
    root: str | Path | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> ImportReport:
    """`what` is `captions:<backbone>` (e.g. `captions:minigptv2`) or `paraphrases`."""
    kind, _, arg = what.partition(":")
    importers: dict[str, Callable[..., ImportReport]] = {
        "captions": lambda: import_captions(
            cache, dataset, arg or "minigptv2", root=root, progress=progress, **kwargs
        ),
        "paraphrases": lambda: import_paraphrases(
            cache, dataset, root=root, progress=progress, **kwargs
        ),
    }
    if kind not in importers or (kind == "paraphrases" and arg):
        raise ValueError(f"unknown import target {what!r}; valid: {', '.join(IMPORT_TARGETS)}")
    return importers[kind]()
