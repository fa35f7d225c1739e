"""Canonical JSON, content hashes and atomic writes: how every stage names and stores things.

Cache keys, config hashes and fingerprints are sha256 over canonical JSON (sorted keys, no
whitespace), so equal content gives equal names on any machine. Files are written to a
temporary name in the same folder and renamed, so a reader (or a crash) never sees half a
file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.core.processes import pid_alive


def canonical_json(obj: Any) -> str:
    """Stable text for hashing: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _read_umask() -> int:
    """The umask, read without changing it (from /proc: setting and restoring it would race
    with another thread creating a file); where /proc is missing, set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file: 0o666 less the umask (a temp file is 0o600,
    which would make a cache or `runs/` shared with a group half unreadable)."""
    return 0o666 & ~_read_umask()


def folder_mode() -> int:
    """The mode `mkdir` would give a new folder: 0o777 less the umask (mkdtemp gives 0o700)."""
    return 0o777 & ~_read_umask()


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None: strict JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


_RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths atomically
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL):  # old kernel or a file system without it
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def replace_folder(new: Path, dest: Path) -> None:
    """Put the complete folder `new` at `dest`: a reader, or a crash, sees the old folder or
    the new one, never neither. An existing `dest` is swapped with `new` in one atomic
    step (Linux renameat2), then removed; where that is not available it is moved aside,
    and moved back if the second rename fails. A `dest` that is a symlink is followed (the
    folder it names is replaced, the link stays)."""
    dest = follow_link(dest)
    if not dest.exists():
        os.replace(new, dest)
        return
    if _exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old folder
        return
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=temp_prefix(dest.name), suffix=".old"))
    os.replace(dest, old / "folder")
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old / "folder", dest)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- temp names, and the temp files a killed process left --------------------------------------
STALE_LEGACY_SECONDS = 3600.0  # a temp name without a process id is someone's after this long


def temp_prefix(name: str) -> str:
    """`.<name>.<pid>-`: the temp file or folder a process writes `name` through carries its
    process id, so the next writer can tell one a killed process left from one in use."""
    return f".{name}.{os.getpid()}-"


_TEMP_OF_A_PROCESS = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]*\.(?:tmp|old)")
_SCANNED: set[str] = set()  # folders this process has cleaned


def remove_stale_temps(folder: Path, name: str) -> list[Path]:
    """Remove the temp files and folders (`.<name>.<pid>-*.tmp|.old`) that killed processes
    left in `folder`: those whose process is gone (and nameless older ones of `name`, made
    before temp names carried a process id, after an hour). Once per folder and process: a
    folder written file by file (a sweep's per-query results, thousands of files) is listed
    once, not once per file. The paths removed."""
    key = os.path.abspath(folder)
    if key in _SCANNED:
        return []
    _SCANNED.add(key)
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") or not entry.name.endswith((".tmp", ".old")):
                continue
            m = _TEMP_OF_A_PROCESS.fullmatch(entry.name)
            if m is not None:
                stale = not pid_alive(int(m["pid"]))
            elif entry.name.startswith(f".{name}."):
                try:
                    stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_LEGACY_SECONDS
                except OSError:
                    continue
            else:
                continue
            if not stale:
                continue
            p = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def follow_link(path: Path) -> Path:
    """`path`, or the path its symlink names (a chain followed to its end): writing through
    a link writes where it points instead of replacing the link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers see all or nothing.
    The file gets the permissions the umask gives any new file. A symlink is followed; a
    write error names `path` (never the temp file); temp files of killed writers of the same
    name are removed."""
    path = follow_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_output_file(path: Path, what: str) -> None:
    """Before any work: `path` can receive the file `what` (not a folder, its folder exists
    and is writable), so a long command does not fail only at its end."""
    target = follow_link(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a folder; {what} names a file to write", str(path))
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"its folder {folder} does not exist; {what} names a file to write",
                                str(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write in {folder}", str(path))


_MAGIC = ((b"\x1f\x8b", "gzip-compressed (gunzip it first)"), (b"PK\x03\x04", "a zip archive (unzip it first)"),
          (b"\xfd7zXZ\x00", "xz-compressed (unxz it first)"), (b"BZh", "bzip2-compressed (bunzip2 it first)"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed (unzstd it first)"), (b"SQLite format 3\x00", "an SQLite database"),
          (b"\x93NUMPY", "a NumPy array file"), (b"%PDF", "a PDF document"))


def binary_kind(head: bytes) -> str | None:
    """What a file that is not text is, from its first bytes (`gzip-compressed ...`), so an
    error says more than 'not UTF-8 (byte 0x8b)'."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None
