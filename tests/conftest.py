"""Shared test fixtures: the real data root, a fresh cache folder, the demo cache, and a
working folder whose stores all live inside it (`ws`: runs the real command line and checks
the rules of an error: one line, no traceback, nothing written)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import toy_dataset  # noqa: F401 (registers toy:val)

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


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in SYNTHETIC demo cache, built once per test session (about 25 s).

    GRANALIGN_TEST_DEMO_CACHE names a folder to reuse across sessions (it is built there
    on first use); otherwise a session temp folder is used."""
    from harness.cache.demo import ensure_demo_cache

    reuse = os.environ.get("GRANALIGN_TEST_DEMO_CACHE")
    path = Path(reuse) if reuse else tmp_path_factory.mktemp("demo-cache")
    ensure_demo_cache(path)
    return path


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema migrated, made once per session.

    Creating a store runs MLflow's migrations (about 9 s); tests copy this file
    (`shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")`) instead."""
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


N_REAL = 40  # QVHighlights val queries in the real-data subset (fast enough for CI)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Any:
    """MiniGPT-v2 captions + paraphrases of the first N_REAL val queries, embedded."""
    from harness.cache.embedders import build_embedder, embed_dataset
    from harness.cache.importers import import_captions, import_paraphrases
    from harness.cache.store import Cache
    from harness.data import load_dataset

    cache = Cache(tmp_path_factory.mktemp("real") / "cache")
    ds = load_dataset("qvhighlights:val", data_root).subset(N_REAL)
    import_captions(cache, ds, "minigptv2", root=data_root, progress=False)
    import_paraphrases(cache, ds, root=data_root, strict_qids=False, progress=False)
    embed_dataset(cache, ds, build_embedder("minilm"), progress=False)
    return cache


QVH_CACHE_ENV = "GRANALIGN_TEST_QVH_CACHE"


@pytest.fixture(scope="session")
def qvh_val_cache(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Any:
    """All of QVHighlights val: MiniGPT-v2 captions and Baichuan2 paraphrases imported,
    every text embedded with all-MiniLM-L6-v2 (the pinned metrics read it, tests/test_pinned.py).

    Building it embeds about 114,000 texts: about 8 minutes on 2 idle CPU cores, once per
    session. GRANALIGN_TEST_QVH_CACHE names a cache to use instead (`make cache-qvh
    SPLIT=val` makes one): read-only when it holds every input already, else completed
    there first."""
    from harness.cache.embedders import build_embedder, embed_dataset
    from harness.cache.importers import import_captions, import_paraphrases
    from harness.cache.store import Cache
    from harness.data import load_dataset

    reuse = os.environ.get(QVH_CACHE_ENV)
    path = Path(reuse) if reuse else tmp_path_factory.mktemp("qvh-val") / "cache"
    if reuse and (path / "cache.sqlite").is_file():
        cache = Cache(path, readonly=True)
        if qvh_val_complete(cache, data_root):
            return cache
    ds = load_dataset("qvhighlights:val", data_root)
    writer = Cache(path)
    import_captions(writer, ds, "minigptv2", root=data_root, progress=False)
    import_paraphrases(writer, ds, root=data_root, progress=False)
    embed_dataset(writer, ds, build_embedder("minilm"), progress=False)
    writer.close()
    return Cache(path, readonly=True)


def qvh_val_complete(cache: Any, data_root: Path) -> bool:
    """Does `cache` feed the pinned configs on all of val (q, qp and MiniGPT-v2 captions)?"""
    from harness.config import ExperimentConfig
    from harness.core.results import MissingInputs
    from harness.runner.trial import InputPool

    cfg = ExperimentConfig(dataset="qvhighlights:val", captions="minigptv2", pairing="q-Ca+qp-Ca")
    try:
        InputPool(cache, data_root).get(cfg)
    except MissingInputs:
        return False
    return True


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the PostgreSQL tests' outcomes in the log, where `-q` would show only dots: CI
    must show them passing against its server, not skipped."""
    outcomes: dict[str, list[str]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") in ("call", "setup") and "test_postgres.py" in report.nodeid:
                if outcome == "passed" and report.when != "call":
                    continue
                outcomes.setdefault(outcome, []).append(report.nodeid.split("::")[-1])
    if outcomes:
        url = os.environ.get("GRANALIGN_TEST_POSTGRES_URL", "no server")
        where = url.rsplit("@", 1)[-1] if "@" in url else url
        terminalreporter.write_line(
            "PostgreSQL tests (" + where + "): "
            + "; ".join(f"{len(v)} {k}: {', '.join(v)}" for k, v in outcomes.items()))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file and folder under `root`."""
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()  # a symlink as it is (a dangling one too)
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() and not p.is_symlink() else -1, st.st_mtime_ns)
    return out


@dataclass
class Workspace:
    """A working folder with its own stores; `run` calls the CLI and checks the rules."""

    root: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str, code: int = 2, names: tuple[str, ...] = (), writes: bool = False) -> str:
        """Run `granalign args`; assert the exit status, that stderr has a `granalign...`
        error line naming each of `names`, no traceback, and (unless `writes`) that nothing
        under the working folder was written or changed. Returns the whole stderr."""
        from harness.cli import main  # lazy: the command line imports Optuna, MLflow, ...

        before = snapshot(self.root)
        self.capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
        err = self.capsys.readouterr().err
        assert rc == code, f"exit {rc}, expected {code}; stderr:\n{err}"
        assert "Traceback" not in err, err
        lines = [x for x in err.strip().splitlines() if x.startswith("granalign")]
        assert lines or (code == 0 and not names), f"no 'granalign...' error line in stderr:\n{err}"
        for name in names:
            assert name in lines[-1], f"{name!r} not in the error line: {lines[-1]}"
        assert not lines or len(lines[-1]) < 600, f"not one short line: {lines[-1]}"
        if not writes:
            after = snapshot(self.root)
            changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
            changed = {k for k in changed if not k.endswith(".lock")}  # lock files carry no data
            assert not changed, f"written or changed: {sorted(changed)}"
        return err

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path


@pytest.fixture()
def ws(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Workspace:
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("GRANALIGN_CACHE", str(root / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("GRANALIGN_OPTUNA_STORAGE", f"sqlite:///{root / 'optuna.db'}")
    return Workspace(root, capsys)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Commands the tests interrupt get Ctrl-C as a terminal's foreground job does: a shell
    that starts the suite in the background (`cmd &`, CI) ignores SIGINT, and a child
    inherits an ignored signal through exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
