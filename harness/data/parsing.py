"""Reading annotation files: JSON lines, typed fields and windows, with errors that name
the file, the line (or key) and what was expected, because a silently skipped annotation
changes every metric."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.core.errors import DataError, DataFileMissing


def need_file(path: Path) -> Path:
    if not path.is_file():
        raise DataFileMissing(path)
    return path


def iter_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line names file and line."""
    with open(need_file(path), encoding="utf-8") as f:
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


def field_of(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"{where}: field {key!r} should be {names}, got {value!r:.80}")
    return value


def windows_of(value: Any, where: str, key: str) -> tuple[tuple[float, float], ...]:
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
