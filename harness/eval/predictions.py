"""Prediction files in the official QVHighlights jsonl format: reading (every line checked),
matching to the ground truth, writing (atomically)."""

from __future__ import annotations

import json
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from harness.core.constants import CLIP_SECONDS, MAX_WINDOWS
from harness.core.errors import DataError
from harness.core.io import atomic_write_text
from harness.core.query import Query
from harness.data.parsing import iter_jsonl

PRED_FIELDS = ("qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores")


SALIENCY_SLACK = 1  # clips: the official sample file has lists one short of ceil(duration / 2)
WINDOW_END_FACTOR = 2.0  # an end past twice the video's duration means wrong units (frames, ms)


def align(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Predictions in GT order; ids must match exactly (see `check_prediction_ids`), and
    each prediction must be about its query's video (`check_against_ground_truth`)."""
    check_prediction_ids(gt, preds)
    by_qid = {p["qid"]: p for p in preds}
    out = [by_qid[q.qid] for q in gt]
    for q, p in zip(gt, out, strict=True):
        check_against_ground_truth(q, p)
    return out


def check_against_ground_truth(q: Query, p: Mapping[str, Any]) -> None:
    """A prediction row fits its query: the same video and sentence where the row names
    them, windows inside the video (a start >= 0, an end before twice its duration: a
    little past the end is scored as the official evaluator scores it, and Moment-DETR's
    own sample file has ends up to 10 s past), one saliency score per 2-s clip."""
    where = f"prediction for qid {q.qid}"
    if "vid" in p and p["vid"] != q.vid:
        raise DataError(f"{where}: vid {p['vid']!r:.60} but the ground truth's is {q.vid!r}")
    if "query" in p and p["query"].strip() != q.query.strip():
        raise DataError(f"{where}: query {p['query']!r:.80} but the ground truth's is {q.query!r:.80}")
    for k, (start, end, _) in enumerate(p["pred_relevant_windows"]):
        if start < 0 or end > WINDOW_END_FACTOR * q.duration:
            raise DataError(
                f"{where}: pred_relevant_windows[{k}] = [{start:g}, {end:g}] is outside the video "
                f"(0 to {q.duration:g} s; ends up to {WINDOW_END_FACTOR:g}x the duration are scored)")
    sal = p.get("pred_saliency_scores")
    if sal is not None:
        lo = int(q.duration / CLIP_SECONDS) - SALIENCY_SLACK  # the official grid floors, clips ceil
        hi = math.ceil(q.duration / CLIP_SECONDS) + SALIENCY_SLACK
        if not lo <= len(sal) <= hi:
            raise DataError(f"{where}: {len(sal)} pred_saliency_scores, expected one per 2-s clip of the "
                            f"{q.duration:g}-s video ({lo} to {hi})")



def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


_JSON_NUMBERS = frozenset((int, float))
_LIST, _THREE = frozenset((list,)), frozenset((3,))


def _plain_numbers(values: list[Any]) -> bool:
    """Every value is a JSON number (exactly int or float) and finite, checked in C loops: the
    fast path for long lists. True only where `_is_number` holds for each value; a False
    sends the list to the per-value check, which names what is wrong."""
    return _JSON_NUMBERS.issuperset(map(type, values)) and all(map(math.isfinite, values))


def parse_prediction_row(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check one official-format prediction row; the error names `where` and the field."""
    qid = obj.get("qid")
    if not isinstance(qid, int) or isinstance(qid, bool):
        got = "nothing" if "qid" not in obj else repr(qid)
        raise DataError(f"{where}: field 'qid' should be an integer query id, got {got:.60}")
    for key in ("query", "vid"):
        if key in obj and not isinstance(obj[key], str):
            raise DataError(f"{where}: field {key!r} should be a string, got {obj[key]!r:.60}")
    if "pred_relevant_windows" not in obj:
        raise DataError(
            f"{where}: missing field 'pred_relevant_windows' (a list of [start, end, score])"
        )
    windows = obj["pred_relevant_windows"]
    if not isinstance(windows, list):
        raise DataError(
            f"{where}: field 'pred_relevant_windows' should be a list of [start, end, score]"
        )
    if len(windows) > MAX_WINDOWS:
        raise DataError(f"{where}: {len(windows)} pred_relevant_windows, expected at most "
                        f"{MAX_WINDOWS} (the official evaluator reads the first 10)")
    flat = list(chain.from_iterable(windows)) if _LIST.issuperset(map(type, windows)) else []
    if len(flat) == 3 * len(windows) and _THREE.issuperset(map(len, windows)) and _plain_numbers(flat) \
            and all(map(operator.le, flat[0::3], flat[1::3])):  # the fast path: plain [start, end, score]
        clean = [list(map(float, w)) for w in windows]
    else:
        clean = _checked_windows(windows, where)
    row: dict[str, Any] = {"qid": qid, "pred_relevant_windows": clean}
    for key in ("query", "vid"):
        if key in obj:
            row[key] = obj[key]
    if "pred_saliency_scores" in obj:
        sal = obj["pred_saliency_scores"]
        if not isinstance(sal, list) or not sal or not (_plain_numbers(sal) or all(_is_number(x) for x in sal)):
            raise DataError(
                f"{where}: field 'pred_saliency_scores' should be a non-empty list of finite "
                "numbers, one per 2-s clip"
            )
        row["pred_saliency_scores"] = list(map(float, sal))
    return row


def _checked_windows(windows: list[Any], where: str) -> list[list[float]]:
    """The windows as [start, end, score] floats, each checked; the error names the first
    bad one."""
    clean = []
    for k, w in enumerate(windows):
        if not isinstance(w, list | tuple) or len(w) != 3 or not all(_is_number(x) for x in w):
            raise DataError(
                f"{where}: pred_relevant_windows[{k}] is {w!r:.60}, expected [start, end, score] "
                "as finite numbers"
            )
        if w[1] < w[0]:
            raise DataError(f"{where}: pred_relevant_windows[{k}] = {w!r} ends before it starts")
        clean.append([float(w[0]), float(w[1]), float(w[2])])
    return clean


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read an official-format prediction jsonl, checking every line; ids must be unique."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"prediction file {path} not found")
    if path.is_dir():
        raise DataError(f"{path}: a folder without predictions.jsonl; expected a prediction file")
    rows: list[dict[str, Any]] = []
    first_line: dict[int, int] = {}
    for lineno, obj in iter_jsonl(path):
        row = parse_prediction_row(obj, f"{path}:{lineno}")
        if row["qid"] in first_line:
            raise DataError(
                f"{path}:{lineno}: qid {row['qid']} already predicted on line {first_line[row['qid']]}"
            )
        first_line[row["qid"]] = lineno
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no predictions in this file (empty?); expected one JSON object per query")
    return rows


def check_prediction_ids(gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> None:
    """Fail unless the predictions cover exactly the GT query ids (as the official evaluator).

    A partial file would otherwise score as if the missing queries did not exist.
    """
    gt_ids = [q.qid for q in gt]
    pred_ids = [p["qid"] for p in preds]
    gt_set, pred_set = set(gt_ids), set(pred_ids)
    problems = []
    if len(pred_set) != len(pred_ids):
        dup = sorted(k for k, n in Counter(pred_ids).items() if n > 1)
        problems.append(f"{len(dup)} ids predicted more than once (e.g. {dup[:5]})")
    missing = [i for i in gt_ids if i not in pred_set]
    extra = [i for i in pred_ids if i not in gt_set]
    if missing:
        problems.append(
            f"{len(missing)} of {len(gt_ids)} GT query ids have no prediction (e.g. {missing[:5]})"
        )
    if extra:
        problems.append(
            f"{len(extra)} predicted ids are not in the ground truth (e.g. {extra[:5]})"
        )
    if problems:
        raise DataError("predictions do not match the ground truth: " + "; ".join(problems))


def write_predictions(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as official-format jsonl, atomically (a crashed run leaves no half file)."""
    lines = []
    for row in rows:
        out = {k: row[k] for k in PRED_FIELDS if k in row}
        out.update({k: v for k, v in row.items() if k not in out})
        lines.append(json.dumps(out, ensure_ascii=False))
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
