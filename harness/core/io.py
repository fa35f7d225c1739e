"""Canonical JSON, content hashes and atomic writes: how every stage names and stores things.

Cache keys, config hashes and fingerprints are sha256 over canonical JSON (sorted keys, no
whitespace), so equal content gives equal names on any machine. Files are written to a
temporary name in the same folder and renamed, so a reader (or a crash) never sees half a
file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """Stable text for hashing: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file: 0o666 less the umask (a temp file is 0o600,
    which would make a cache or `runs/` shared with a group half unreadable)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode `mkdir` would give a new folder: 0o777 less the umask (mkdtemp gives 0o700)."""
    return 0o777 & ~_umask()


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None: strict JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def replace_folder(new: Path, dest: Path) -> None:
    """Put the complete folder `new` at `dest` by renames: a reader sees the old folder or
    the new one. A folder already at `dest` is moved aside first and removed afterwards."""
    if not dest.exists():
        os.replace(new, dest)
        return
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
    os.replace(dest, old / "folder")
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers see all or nothing.
    The file gets the permissions the umask gives any new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
