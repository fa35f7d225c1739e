"""The dependency floors in pyproject.toml are the versions the code was tested with.

A floor below what the code uses installs a library whose API or behaviour differs
(transformers 4.x has no `dtype=` keyword and other config keys; open_clip 2.x and 3.x
build a different CLIP activation for the same call), and the first sign of it would be a
researcher's wrong cache. So: the installed versions meet every declared specifier, the
model libraries are floored at the majors the code is written for and capped below the
next, and pip can resolve all the floors together."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# the majors the code is written for: (floor, cap)
MODEL_LIBRARIES = {"transformers": (5, 6), "open_clip_torch": (3, 4), "sentence-transformers": (6, 7)}


def requirements() -> list[Requirement]:
    """The core and dev requirements, with the project's own extras that dev names
    (`granalign-harness[fast-embed]`) replaced by their requirements."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out: list[Requirement] = []
    for d in [*meta["dependencies"], *meta["optional-dependencies"]["dev"]]:
        req = Requirement(d)
        if req.name == meta["name"]:
            out += [Requirement(e) for x in sorted(req.extras) for e in meta["optional-dependencies"][x]]
        else:
            out.append(req)
    return out


def floor(req: Requirement) -> Version | None:
    pins = [Version(s.version) for s in req.specifier if s.operator in (">=", "==") and "*" not in s.version]
    return min(pins) if pins else None


def test_installed_versions_meet_every_specifier() -> None:
    for req in requirements():
        installed = version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req}: installed {installed}"


def test_every_floor_is_a_tested_version_and_model_libraries_are_capped() -> None:
    for req in requirements():
        f = floor(req)
        assert f is not None, f"{req} has no floor"
        assert f <= Version(version(req.name)), req
    by_name = {r.name: r for r in requirements()}
    for name, (lo, hi) in MODEL_LIBRARIES.items():
        req = by_name[name]
        assert floor(req).major == lo, req  # type: ignore[union-attr]
        assert not req.specifier.contains(f"{hi}.0.0") and req.specifier.contains(str(floor(req))), req


@pytest.mark.slow
def test_pip_resolves_the_floors_together(tmp_path: Path) -> None:
    """Every dependency pinned at its floor: pip's resolver finds one installable set (a
    dry run against the package index; nothing is installed)."""
    pins = [f"{r.name}=={floor(r)}" if not any(s.operator == "==" for s in r.specifier) else str(r)
            for r in requirements()]
    (tmp_path / "floors.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
         "--report", str(report), "-r", str(tmp_path / "floors.txt")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = {re.sub(r"[-_.]+", "-", p["metadata"]["name"]).lower(): p["metadata"]["version"]
              for p in json.loads(report.read_text())["install"]}
    for r in requirements():
        name = re.sub(r"[-_.]+", "-", r.name).lower()
        assert r.specifier.contains(chosen[name], prereleases=True), (r, chosen[name])
        if not any(s.operator == "==" for s in r.specifier):
            assert Version(chosen[name]) == floor(r), (r, chosen[name])
