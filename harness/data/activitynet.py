"""ActivityNet-Captions val_1 / val_2 (Krishna et al., 2017) in the 2D-TAN release:
`{vid: {duration, timestamps, sentences}}`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.core.errors import DataError
from harness.core.query import Query
from harness.data.parsing import (
    duration_of,
    field_of,
    need_file,
    parse_json_line,
    path_safe_id,
    windows_of,
)
from harness.data.spec import register_dataset


@register_dataset("activitynet", splits=("val_1", "val_2"), protocol="top1",
                  description="val_1.json / val_2.json (2D-TAN)")
def load_activitynet(root: Path, split: str) -> tuple[Sequence[Query], str]:
    path = need_file(root / "activitynet" / f"{split}.json")
    data = parse_json_line(path.read_bytes(), str(path))
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object {{vid: {{duration, timestamps, sentences}}}}")
    queries = []
    for vid, rec in data.items():
        where = f"{path}: video {vid}"
        path_safe_id(vid, where)
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object with duration, timestamps, sentences")
        duration = duration_of(rec.get("duration"), where)
        stamps = field_of(rec, "timestamps", list, where)
        sentences = field_of(rec, "sentences", list, where)
        if len(stamps) != len(sentences):
            raise DataError(
                f"{where}: {len(stamps)} timestamps but {len(sentences)} sentences; expected one each"
            )
        for i, (w, sent) in enumerate(zip(stamps, sentences, strict=True)):
            if not isinstance(sent, str):
                raise DataError(f"{where}: sentence {i} should be a string, got {sent!r:.60}")
            win = windows_of([w], f"{where} sentence {i}", "timestamps", duration)
            queries.append(Query(len(queries), vid, sent.strip(), duration, win))
    return queries, str(path)
