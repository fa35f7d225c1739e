"""Reading annotation files: JSON lines, typed fields and windows, with errors that name
the file, the line (or key) and what was expected, because a silently skipped annotation
changes every metric."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.core.constants import CLIP_SECONDS
from harness.core.errors import DataError, DataFileMissing
from harness.core.io import binary_kind


def need_file(path: Path) -> Path:
    """`path` exists and is not a folder: a file, or a pipe or device to read from
    (`/dev/stdin`, a process substitution)."""
    if not path.exists():
        raise DataFileMissing(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder; expected a file")
    return path


MAX_DURATION = 24 * 3600.0  # seconds: a longer "video" is a unit error (milliseconds, frames)
WINDOW_SLACK = CLIP_SECONDS  # an annotation may end up to one clip past the video's end


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # one for every line (json.loads makes one a call)


def parse_json_line(line: str | bytes, where: str) -> Any:
    """One JSON value (a line, or a whole file); every way a line can be unreadable (not UTF-8, invalid JSON, NaN or
    Infinity, nested too deeply to parse) is a DataError naming `where`."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            kind = binary_kind(line)
            if kind is not None:
                raise DataError(f"{where}: the file is {kind}; expected JSON text") from None
            raise DataError(f"{where}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1})") from None
    try:
        if line.startswith("\ufeff"):  # json.loads names a byte-order mark; the decoder alone would not
            return json.loads(line, parse_constant=_no_constant)
        return _DECODER.decode(line)
    except json.JSONDecodeError as e:
        at = f"{where}:{e.lineno}" if "\n" in line.rstrip("\n") else where  # a whole file: its line
        raise DataError(f"{at}: invalid JSON ({e.msg}, column {e.colno})") from None
    except ValueError as e:
        raise DataError(f"{where}: invalid JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None


def iter_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line names file and line."""
    with open(need_file(path), "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = parse_json_line(line, f"{path}:{lineno}")
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def duration_of(value: Any, where: str, key: str = "duration") -> float:
    """A video duration in seconds: finite, > 0 and at most a day."""
    if value is None:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} should be a number of seconds, got {value!r:.60}")
    d = float(value)
    if not math.isfinite(d) or d <= 0 or d > MAX_DURATION:
        raise DataError(f"{where}: field {key!r} = {value!r:.40}, expected seconds in (0, {MAX_DURATION:.0f}]")
    return d


def field_of(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"{where}: field {key!r} should be {names}, got {value!r:.80}")
    return value


def windows_of(value: Any, where: str, key: str, duration: float) -> tuple[tuple[float, float], ...]:
    """Ground-truth windows: finite seconds, 0 <= start <= end <= duration + one clip (some
    public annotations end a little past the video: Charades-STA by up to 1.5 s)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {key!r} should be a non-empty list of [start, end]")
    out = []
    for w in value:
        if (
            not isinstance(w, list | tuple)
            or len(w) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in w)
        ):
            raise DataError(f"{where}: field {key!r} has {w!r:.80}, expected [start, end] in seconds")
        s, e = float(w[0]), float(w[1])
        if e < s:
            raise DataError(f"{where}: field {key!r} has window {w!r} that ends before it starts")
        if s < 0 or e > duration + WINDOW_SLACK:
            raise DataError(f"{where}: field {key!r} has window {w!r}, outside the video "
                            f"(0 to {duration:g} s, + {WINDOW_SLACK:g} s allowed at the end)")
        out.append((s, e))
    return tuple(out)


_UNSAFE_ID = re.compile(r"(^\.)|[/\\\x00-\x1f]")


def path_safe_id(value: str, where: str, key: str = "vid") -> str:
    """An id that names files (a video's frame archive, its caption file): no folder
    separators, control characters or leading dot, so no id can reach outside its folder."""
    if not value or _UNSAFE_ID.search(value) or len(value) > 200:
        raise DataError(f"{where}: field {key!r} = {value!r:.80} cannot name a file; expected an id "
                        "without '/', '\\', control characters or a leading '.'")
    return value
