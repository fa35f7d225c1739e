"""Shared test fixtures: the real data root and a fresh cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("GRANALIGN_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real benchmark files (CI sets GRANALIGN_DATA=../shared/data)."""
    if not (DATA_ROOT / "qvhighlights" / "highlight_val_release.jsonl").is_file():
        pytest.fail(f"real data not found at {DATA_ROOT}: set GRANALIGN_DATA")
    return DATA_ROOT


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
