"""What a result needs to be reproduced: git commit, package versions, host."""

from __future__ import annotations

import platform
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "numpy", "pandas", "torch", "transformers", "sentence-transformers", "open_clip_torch",
    "mlflow", "optuna", "granalign-harness",
)


@cache
def git_commit(cwd: str | None = None) -> str:
    """HEAD of the repository the harness runs from, with `+dirty` for local changes."""
    where = cwd or str(Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def installed_versions(*dists: str) -> dict[str, str]:
    """Each distribution's installed version, or "not installed"."""
    out = {}
    for name in dists:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@cache
def package_versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), **installed_versions(*PACKAGES)}
