"""Charades-STA test (Gao et al., 2017) in the 2D-TAN release: `VID start end##sentence`
lines, durations from the Charades metadata csv."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from harness.core.errors import DataError
from harness.core.query import Query
from harness.data.parsing import duration_of, need_file, path_safe_id, windows_of
from harness.data.spec import register_dataset


@register_dataset("charades_sta", splits=("test",), protocol="top1",
                  description="charades_sta_test.txt + Charades_v1_test.csv (2D-TAN)")
def load_charades_sta(root: Path, split: str) -> tuple[Sequence[Query], str]:
    """`VID start end##sentence` lines + durations from Charades_v1_test.csv.

    qid is the 0-based line index among non-blank lines: Charades-STA has no query ids and
    the same (vid, window) repeats with different sentences.
    """
    folder = root / "charades_sta"
    csv_path = need_file(folder / "Charades_v1_test.csv")
    durations: dict[str, float] = {}
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"id", "length"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}:1: expected a header with columns 'id' and 'length'")
        for lineno, row in enumerate(reader, 2):
            try:
                length = float(row["length"])
            except (TypeError, ValueError):
                raise DataError(
                    f"{csv_path}:{lineno}: column 'length' should be seconds, got {row['length']!r}"
                ) from None
            durations[row["id"]] = duration_of(length, f"{csv_path}:{lineno}", "length")
    txt_path = need_file(folder / "charades_sta_test.txt")
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
            vid = path_safe_id(parts[0], where)
            try:
                s, e = float(parts[1]), float(parts[2])
            except ValueError:
                raise DataError(f"{where}: start and end should be seconds, got {parts[1:]!r}") from None
            if vid not in durations:
                raise DataError(f"{where}: video {vid!r} has no duration in {csv_path.name}")
            queries.append(
                Query(len(queries), vid, sentence.strip(), durations[vid], windows_of([[s, e]], where, "window", durations[vid]))
            )
    return queries, str(txt_path)
