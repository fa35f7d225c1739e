"""QVHighlights (Lei et al., 2021): the official annotation jsonl, val and the public test
release (which has no ground truth: it loads for prediction only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from harness.core.constants import CLIP_SECONDS
from harness.core.errors import DataError
from harness.core.query import Query
from harness.data.parsing import duration_of, field_of, iter_jsonl, path_safe_id, windows_of
from harness.data.spec import register_dataset

SALIENCY_MAX = 4  # annotators score each clip 0 (very bad) to 4 (very good)
_INT, _LIST = frozenset((int,)), frozenset((list,))  # JSON's integer and array types (a bool's is bool)


@register_dataset("qvhighlights", splits=("val", "test"), protocol="qvhighlights",
                  description="highlight_{split}_release.jsonl (moment_detr); test has no GT",
                  submission="hl_{split}_submission.jsonl")  # the Codalab server's file names
def load_qvhighlights(root: Path, split: str) -> tuple[Sequence[Query], str]:
    path = root / "qvhighlights" / f"highlight_{split}_release.jsonl"
    queries = [
        parse_qvhighlights_row(obj, f"{path}:{n}", require_gt=split != "test")
        for n, obj in iter_jsonl(path)
    ]
    return queries, str(path)


def parse_qvhighlights_row(obj: dict[str, Any], where: str, require_gt: bool = True) -> Query:
    """One row of the official QVHighlights annotation jsonl."""
    qid = field_of(obj, "qid", int, where)
    vid = path_safe_id(field_of(obj, "vid", str, where), where)
    query = field_of(obj, "query", str, where)
    duration = duration_of(obj.get("duration"), where)
    windows: tuple[tuple[float, float], ...] = ()
    saliency = None
    if require_gt or "relevant_windows" in obj:
        windows = windows_of(obj.get("relevant_windows"), where, "relevant_windows", duration)
    if "relevant_clip_ids" in obj or "saliency_scores" in obj:
        ids = field_of(obj, "relevant_clip_ids", list, where)
        scores = field_of(obj, "saliency_scores", list, where)
        if len(ids) != len(scores):
            raise DataError(
                f"{where}: relevant_clip_ids has {len(ids)} entries but saliency_scores has "
                f"{len(scores)}; expected one score triple per clip id"
            )
        saliency = _saliency(ids, scores, where, math.ceil(duration / CLIP_SECONDS))
    return Query(qid, vid, query, duration, windows, saliency)


def _saliency(ids: list[Any], scores: list[Any], where: str, n_clips: int) -> dict[int, tuple[int, ...]]:
    """clip id -> annotator scores (0-4 each, clip ids inside the video, each once); a
    malformed entry names the row instead of a bare TypeError."""

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    # the fast path, in C loops: plain JSON ints in range, each id once, each score list
    # non-empty; anything else goes through the loop below, which names the bad entry
    flat = list(chain.from_iterable(scores)) if _LIST.issuperset(map(type, scores)) and all(scores) else None
    if (flat is not None and _INT.issuperset(map(type, ids)) and _INT.issuperset(map(type, flat))
            and (not ids or (min(ids) >= 0 and max(ids) < n_clips)) and len(set(ids)) == len(ids)
            and (not flat or (min(flat) >= 0 and max(flat) <= SALIENCY_MAX))):
        return dict(zip(ids, map(tuple, scores), strict=True))
    out: dict[int, tuple[int, ...]] = {}
    for k, (i, s) in enumerate(zip(ids, scores, strict=True)):
        if not is_int(i) or i < 0 or i >= n_clips:
            raise DataError(f"{where}: relevant_clip_ids[{k}] is {i!r:.40}, expected a clip index "
                            f"0 to {n_clips - 1} (the video has {n_clips} clips of {CLIP_SECONDS:g} s)")
        if i in out:
            raise DataError(f"{where}: relevant_clip_ids[{k}] = {i} appears twice")
        if not isinstance(s, list) or not s or not all(is_int(x) and 0 <= x <= SALIENCY_MAX for x in s):
            raise DataError(
                f"{where}: saliency_scores[{k}] is {s!r:.60}, expected a list of integer scores "
                f"0 to {SALIENCY_MAX} (one per annotator)"
            )
        out[i] = tuple(s)
    return out


