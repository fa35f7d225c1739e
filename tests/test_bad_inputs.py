"""A hostile user's inputs, grouped by kind: every one gets exit status 2 (or 3 for a run the
cache cannot feed), one line on stderr that names the file (and the line or query id where
there is one) and says what was expected, no traceback, and nothing written or changed in
the working folder.

Each case runs the real command line in-process (`harness.cli.main`) in a temp working
folder whose Optuna storage, MLflow store, cache and `runs/` all live inside it, so "nothing
written" is checked by a snapshot of that folder before and after.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.cli import main
from tests.conftest import Workspace

REF = Path("qvhighlights") / "eval_reference" / "sample_val_preds.jsonl"
ANNOTATIONS = Path("qvhighlights") / "highlight_val_release.jsonl"
REPO = Path(__file__).resolve().parents[1]


# ============================================================================ predictions
@pytest.fixture(scope="module")
def sample_lines(data_root: Path) -> list[dict]:
    return [json.loads(x) for x in (data_root / REF).read_text().splitlines() if x.strip()]


def _preds_with(lines: list[dict], change: Callable[[list[dict]], None]) -> str:
    rows = json.loads(json.dumps(lines))
    change(rows)
    return "".join(json.dumps(r) + "\n" for r in rows)


def _set_window(i: int, w: list) -> Callable[[list[dict]], None]:
    def change(rows: list[dict]) -> None:
        rows[i]["pred_relevant_windows"][0] = w
    return change


def _set(i: int, key: str, value: object) -> Callable[[list[dict]], None]:
    def change(rows: list[dict]) -> None:
        rows[i][key] = value
    return change


PREDICTION_CASES = {
    # case: (change to the official sample file, what the error line must name)
    "negative start": (_set_window(0, [-5.0, 70.0, 0.9]), ("preds.jsonl", "qid 2579", "outside the video")),
    "end past twice the duration": (_set_window(3, [100.0, 500.0, 0.9]), ("preds.jsonl", "qid", "outside the video")),
    "1e308 end": (_set_window(0, [0.0, 1e308, 0.9]), ("preds.jsonl", "qid 2579", "outside the video")),
    "start after end": (_set_window(0, [70.0, 10.0, 0.9]), ("preds.jsonl:1", "ends before it starts")),
    "two numbers": (_set_window(0, [0.0, 70.0]), ("preds.jsonl:1", "[start, end, score]")),
    "string in window": (_set_window(1, [0.0, "70", 1.0]), ("preds.jsonl:2", "[start, end, score]")),
    "wrong vid": (_set(0, "vid", "someone_else_0.0_150.0"), ("preds.jsonl", "qid 2579", "vid")),
    "wrong query": (_set(0, "query", "a different sentence"), ("preds.jsonl", "qid 2579", "query")),
    "qid as float": (_set(0, "qid", 2579.0), ("preds.jsonl:1", "qid")),
    "qid missing": (lambda rows: rows[2].pop("qid"), ("preds.jsonl:3", "qid")),
    "windows not a list": (_set(0, "pred_relevant_windows", "0 10"), ("preds.jsonl:1", "pred_relevant_windows")),
    "saliency too long": (_set(0, "pred_saliency_scores", [0.5] * 300), ("preds.jsonl", "qid 2579", "pred_saliency_scores")),
    "saliency too short": (_set(0, "pred_saliency_scores", [0.5] * 10), ("preds.jsonl", "qid 2579", "pred_saliency_scores")),
    "saliency not numbers": (_set(0, "pred_saliency_scores", ["a"]), ("preds.jsonl:1", "pred_saliency_scores")),
    "too many windows": (_set(0, "pred_relevant_windows", [[0, 2, 1]] * 1001), ("preds.jsonl:1", "at most 1000")),
    "duplicate qid": (lambda rows: rows.append(dict(rows[0])), ("preds.jsonl:1551", "already predicted")),
    "a query missing": (lambda rows: rows.pop(5), ("preds.jsonl", "no prediction")),
    "an unknown qid": (lambda rows: rows.append({**rows[0], "qid": 99999999}), ("preds.jsonl", "not in the ground truth")),
}


@pytest.mark.parametrize("case", list(PREDICTION_CASES))
def test_bad_prediction_file(case: str, ws: Workspace, data_root: Path, sample_lines: list[dict]) -> None:
    change, names = PREDICTION_CASES[case]
    pred = ws.write("preds.jsonl", _preds_with(sample_lines, change))
    ws.run("eval", "--dataset", "qvhighlights:val", "--pred", str(pred), "--data-root", str(data_root),
           names=names)


RAW_PREDICTION_CASES = {
    "NaN literal": (b'{"qid": 2579, "pred_relevant_windows": [[NaN, 70, 0.9]]}\n', ("preds.jsonl:1", "NaN")),
    "Infinity literal": (b'{"qid": 2579, "pred_relevant_windows": [[0, Infinity, 0.9]]}\n', ("preds.jsonl:1",)),
    "not UTF-8": (b'{"qid": 2579, "query": "caf\xe9"}\n', ("preds.jsonl:1", "UTF-8")),
    "nested 100000 deep": (b"[" * 100000 + b"\n", ("preds.jsonl:1", "nested too deeply")),
    "invalid JSON": (b'{"qid": 2579,\n', ("preds.jsonl:1", "invalid JSON")),
    "an array line": (b"[1, 2]\n", ("preds.jsonl:1", "JSON object")),
    "empty file": (b"", ("preds.jsonl", "no predictions")),
    "only blank lines": (b"\n\n  \n", ("preds.jsonl", "no predictions")),
}


@pytest.mark.parametrize("case", list(RAW_PREDICTION_CASES))
def test_unreadable_prediction_file(case: str, ws: Workspace, data_root: Path) -> None:
    data, names = RAW_PREDICTION_CASES[case]
    pred = ws.write("preds.jsonl", data)
    ws.run("eval", "--dataset", "qvhighlights:val", "--pred", str(pred), "--data-root", str(data_root),
           names=names)


def test_missing_prediction_file_and_bad_compare_side(ws: Workspace, data_root: Path) -> None:
    ws.run("eval", "--dataset", "qvhighlights:val", "--pred", str(ws.root / "nope.jsonl"),
           "--data-root", str(data_root), names=("nope.jsonl", "not found"))
    bad = ws.write("b.jsonl", b'{"qid": 1}\n')
    ws.run("compare", str(data_root / REF), str(bad), "--dataset", "qvhighlights:val",
           "--data-root", str(data_root), names=("b.jsonl:1", "pred_relevant_windows"))


# ============================================================================ data root
@pytest.fixture(scope="module")
def annotation_lines(data_root: Path) -> list[str]:
    return (data_root / ANNOTATIONS).read_text().splitlines()


def _gt_root(ws: Workspace, lines: list[str], line_no: int, text: str | None) -> Path:
    """A data root whose val annotations have line `line_no` (1-based) replaced by `text`
    (None: removed), and the file cut to the first 20 lines."""
    rows = list(lines[:20])
    if text is None:
        rows.pop(line_no - 1)
    else:
        rows[line_no - 1] = text
    ws.write("data/qvhighlights/highlight_val_release.jsonl", "\n".join(rows) + "\n")
    return ws.root / "data"


def _gt_edit(change: Callable[[dict], None]) -> Callable[[list[str]], str]:
    def make(lines: list[str]) -> str:
        row = json.loads(lines[1])
        change(row)
        return json.dumps(row)
    return make


def _gt_set(key: str, value: object) -> Callable[[list[str]], str]:
    return _gt_edit(lambda r: r.__setitem__(key, value))


GT_CASES = {
    "window NaN": (_gt_set("relevant_windows", [[float("nan"), 150]]), ("release.jsonl:2", "NaN")),
    "window Infinity": (_gt_set("relevant_windows", [[0, float("inf")]]), ("release.jsonl:2", "Infinity")),
    "window negative": (_gt_set("relevant_windows", [[-10, 20]]), ("release.jsonl:2", "outside the video")),
    "window past the end": (_gt_set("relevant_windows", [[82, 500]]), ("release.jsonl:2", "outside the video")),
    "window reversed": (_gt_set("relevant_windows", [[20, 10]]), ("release.jsonl:2", "ends before it starts")),
    "saliency label 5": (_gt_edit(lambda r: r["saliency_scores"].__setitem__(0, [5, 1, 1])),
                         ("release.jsonl:2", "saliency_scores[0]")),
    "saliency label -1": (_gt_edit(lambda r: r["saliency_scores"].__setitem__(0, [-1, 1, 1])),
                          ("release.jsonl:2", "saliency_scores[0]")),
    "clip id past the video": (_gt_edit(lambda r: r["relevant_clip_ids"].__setitem__(0, 500)),
                               ("release.jsonl:2", "relevant_clip_ids[0]")),
    "clip id twice": (_gt_edit(lambda r: r["relevant_clip_ids"].__setitem__(1, r["relevant_clip_ids"][0])),
                      ("release.jsonl:2", "appears twice")),
    "ids and scores differ in length": (_gt_edit(lambda r: r["saliency_scores"].pop()),
                                        ("release.jsonl:2", "relevant_clip_ids")),
    "duration 0": (_gt_set("duration", 0), ("release.jsonl:2", "duration")),
    "duration 1e308": (_gt_set("duration", 1e308), ("release.jsonl:2", "duration")),
    "duration a string": (_gt_set("duration", "150"), ("release.jsonl:2", "duration")),
    "vid climbs out": (_gt_set("vid", "../../../etc"), ("release.jsonl:2", "vid")),
    "vid with a slash": (_gt_set("vid", "a/b"), ("release.jsonl:2", "vid")),
    "qid missing": (_gt_edit(lambda r: r.pop("qid")), ("release.jsonl:2", "qid")),
    "not UTF-8": (lambda lines: lines[1][:10] + "\udce9", ("release.jsonl:2", "UTF-8")),
}


@pytest.mark.parametrize("case", list(GT_CASES))
def test_bad_ground_truth(case: str, ws: Workspace, data_root: Path, annotation_lines: list[str]) -> None:
    make, names = GT_CASES[case]
    text = make(annotation_lines)
    rows = list(annotation_lines[:20])
    rows[1] = text
    data = ("\n".join(rows) + "\n").encode("utf-8", "surrogateescape")
    ws.write("data/qvhighlights/highlight_val_release.jsonl", data)
    pred = ws.write("p.jsonl", b'{"qid": 1, "pred_relevant_windows": [[0, 2, 1]]}\n')
    ws.run("eval", "--dataset", "qvhighlights:val", "--pred", str(pred), "--data-root", str(ws.root / "data"),
           names=names)


def test_ground_truth_files_missing_empty_or_repeated(ws: Workspace, annotation_lines: list[str]) -> None:
    pred = ws.write("p.jsonl", b'{"qid": 1, "pred_relevant_windows": [[0, 2, 1]]}\n')
    args = ("eval", "--dataset", "qvhighlights:val", "--pred", str(pred), "--data-root", str(ws.root / "data"))
    ws.run(*args, names=(str(ws.root / "data"), "is not a directory"))
    (ws.root / "data" / "qvhighlights").mkdir(parents=True)
    ws.run(*args, names=("highlight_val_release.jsonl", "missing data file"))
    ws.write("data/qvhighlights/highlight_val_release.jsonl", "")
    ws.run(*args, names=("highlight_val_release.jsonl", "no queries"))
    ws.write("data/qvhighlights/highlight_val_release.jsonl", "\n".join([annotation_lines[0]] * 2) + "\n")
    ws.run(*args, names=("highlight_val_release.jsonl", "appears twice"))


def test_bad_charades_and_activitynet_files(ws: Workspace) -> None:
    pred = ws.write("p.jsonl", b'{"qid": 0, "pred_relevant_windows": [[0, 2, 1]]}\n')
    ws.write("data/charades_sta/Charades_v1_test.csv", "id,length\nAAAAA,nan\n")
    ws.write("data/charades_sta/charades_sta_test.txt", "AAAAA 0.0 10.0##a person sits.\n")
    args = ("eval", "--pred", str(pred), "--data-root", str(ws.root / "data"))
    ws.run(*args, "--dataset", "charades_sta:test", names=("Charades_v1_test.csv:2", "length"))
    ws.write("data/charades_sta/Charades_v1_test.csv", "id,length\nAAAAA,30\n")
    ws.write("data/charades_sta/charades_sta_test.txt", "AAAAA 0.0 40.0##a person sits.\n")
    ws.run(*args, "--dataset", "charades_sta:test", names=("charades_sta_test.txt:1", "outside the video"))
    ws.write("data/activitynet/val_1.json", '{"v_a": {"duration": 10,\n "timestamps": [[0, 5]],\n "sentences": [}}')
    ws.run(*args, "--dataset", "activitynet:val_1", names=("val_1.json:3", "invalid JSON"))
    ws.write("data/activitynet/val_1.json", '{"v_a": {"duration": NaN, "timestamps": [[0, 5]], "sentences": ["x"]}}')
    ws.run(*args, "--dataset", "activitynet:val_1", names=("val_1.json", "NaN"))


# ============================================================================ configs
def _cfg(ws: Workspace, text: str | bytes, name: str = "cfg.yaml") -> Path:
    if isinstance(text, str) and "base:" not in text and text.strip() and not text.lstrip().startswith("-"):
        text = f"base: {REPO / 'experiments' / 'demo.yaml'}\n{text}"
    return ws.write(name, text)


CONFIG_CASES = {
    "empty name": ("name: ''\n", ("cfg.yaml", "'name'")),
    "limit -5": ("limit: -5\n", ("cfg.yaml", "'limit'")),
    "limit 0": ("limit: 0\n", ("cfg.yaml", "'limit'")),
    "duplicate key": ("lam: 0.2\nlam: 0.3\n", ("cfg.yaml:3", "duplicate key 'lam'")),
    "cq_fallback a number": ("cq_fallback: 3\n", ("cfg.yaml", "cq_fallback")),
    "instruction_pair 99": ("instruction_pair: 99\n", ("cfg.yaml", "instruction_pair")),
    "unknown key": ("lamda: 0.3\n", ("cfg.yaml", "lamda")),
    "bins 1e9": ("bins: 1000000000\n", ("cfg.yaml", "bins")),
    "max_windows 1e9": ("max_windows: 1000000000\n", ("cfg.yaml", "max_windows")),
    "seed -1": ("seed: -1\n", ("cfg.yaml", "seed")),
    "tags a number": ("tags: 5\n", ("cfg.yaml", "tags")),
    "tags a list": ("tags: [a, b]\n", ("cfg.yaml", "tags")),
    "lam a word": ("lam: abc\n", ("cfg.yaml", "lam")),
    "unknown recipe": ("recipe: vtggpt\n", ("cfg.yaml", "vtggpt")),
    "bad pairing": ("pairing: [[1]]\n", ("cfg.yaml", "pairing")),
    "a YAML list": ("- a\n- b\n", ("cfg.yaml", "mapping")),
    "empty file": ("", ("cfg.yaml", "empty")),
    "YAML syntax": ("lam: [0.2,\n", ("cfg.yaml", "invalid YAML")),
    "missing base": ("base: nope.yaml\n", ("nope.yaml", "not found")),
    "not UTF-8": (b"name: caf\xe9\n", ("cfg.yaml", "utf-8")),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(case: str, ws: Workspace, demo_cache: Path) -> None:
    text, names = CONFIG_CASES[case]
    cfg = _cfg(ws, text)
    ws.run("run", str(cfg), "--cache", str(demo_cache), names=names)


@pytest.mark.parametrize(("flag", "value"), [("--limit", "-5"), ("--limit", "0"), ("--limit", "x")])
def test_bad_run_flags(flag: str, value: str, ws: Workspace) -> None:
    ws.run("run", str(REPO / "experiments" / "demo.yaml"), flag, value, names=(flag, "whole number"))


def test_a_run_name_cannot_leave_runs(ws: Workspace, demo_cache: Path) -> None:
    for name in ("../../../../tmp/escape", "/tmp/abs-escape"):
        cfg = _cfg(ws, f"name: {name!r}\n")
        assert main(["run", str(cfg), "--cache", str(demo_cache)]) == 0
    made = sorted(p.name for p in (ws.root / "runs").iterdir())
    assert [m.rsplit("-", 1)[0] for m in made] == ["tmp_abs-escape", "tmp_escape"]
    assert not Path("/tmp/abs-escape").exists() and not list(Path("/tmp").glob("escape-*"))


def test_run_folder_is_complete_or_absent(ws: Workspace, demo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies while writing (a full disk) leaves no run folder, not half of one."""
    import harness.runner.trial as trial_mod

    real = trial_mod.atomic_write_text
    calls = []

    def failing(path: Path, text: str) -> None:
        calls.append(path.name)
        if path.name == "config.yaml":
            raise OSError(28, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(trial_mod, "atomic_write_text", failing)
    out = ws.root / "runs" / "x"
    err = ws.run("run", str(REPO / "experiments" / "demo.yaml"), "--cache", str(demo_cache), "--out", str(out),
                 names=("config.yaml", "No space left on device", "disk is full"), writes=True)
    assert "predictions.jsonl" in calls and "metrics.json" in calls
    assert not out.exists() and not list(out.parent.glob(".x.*")), err


# ============================================================================ tables
def test_bad_table_commands(ws: Workspace, demo_cache: Path) -> None:
    common = ("--demo", "--cache", str(demo_cache))
    ws.run("table", "3", *common, "--set", "pairing=nonsense", names=("--set pairing=nonsense", "pairing"))
    ws.run("table", "3", *common, "--set", "lam=abc", names=("--set lam=abc", "lam"))
    ws.run("table", "3", *common, "--set", "lam", names=("lam", "key=value"))
    ws.run("table", "99", *common, names=("no table '99'",))
    ws.run("table", "3", *common, "--substitute", "Cq=bogus", names=("Cq=bogus",))
    ws.run("table", "3", "--from-mlflow", names=("mlflow.db", "no MLflow"))  # and creates no store
    ws.run("table", "3", *common, "--workers", "0", names=("--workers", "whole number"))


# ============================================================================ sweeps
def _space(ws: Workspace, change: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
    if text is None:
        data = yaml.safe_load((REPO / "experiments" / "sweeps" / "demo.yaml").read_text())
        data["base"] = str(REPO / "experiments" / "demo.yaml")
        if change is not None:
            change(data)
        text = yaml.safe_dump(data)
    return ws.write("space.yaml", text)


SWEEP_CASES = {
    "low > high": (lambda d: d["space"].__setitem__("lam", {"type": "float", "low": 0.6, "high": 0.1}),
                   ("space.yaml", "low 0.6 > high 0.1")),
    "high outside the config": (lambda d: d["space"].__setitem__("lam", {"type": "float", "low": 0, "high": 5.0}),
                                ("space.yaml", "space.lam")),
    "unknown metric": (lambda d: d.__setitem__("objectives", [{"metric": "MR-bogus", "direction": "maximize"}]),
                       ("space.yaml", "MR-bogus")),
    "bad choice": (lambda d: d["space"].__setitem__("normalisation", {"type": "categorical",
                                                                      "choices": ["minmax", "bogus"]}),
                   ("space.yaml", "bogus")),
    "log scale from 0": (lambda d: d["space"].__setitem__("lam", {"type": "float", "low": 0.0, "high": 1.0,
                                                                   "log": True}), ("space.yaml", "log")),
    "no objectives": (lambda d: d.pop("objectives"), ("space.yaml", "objectives")),
    "sampler seed a word": (lambda d: d.__setitem__("sampler", {"type": "tpe", "seed": "abc"}),
                            ("space.yaml", "sampler.seed")),
    "unknown sampler": (lambda d: d.__setitem__("sampler", {"type": "bogus"}), ("space.yaml", "bogus")),
    "not a config key": (lambda d: d["space"].__setitem__("lamda", {"type": "float", "low": 0, "high": 1}),
                         ("space.yaml", "lamda")),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_bad_sweep_space(case: str, ws: Workspace, demo_cache: Path) -> None:
    change, names = SWEEP_CASES[case]
    space = _space(ws, change)
    ws.run("sweep", str(space), "--demo", "--cache", str(demo_cache), "--n-trials", "2", names=names)


def test_bad_sweep_files_and_flags(ws: Workspace, demo_cache: Path) -> None:
    common = ("--demo", "--cache", str(demo_cache))
    space = _space(ws, text="name: x\nobjectives: [a,\n")
    ws.run("sweep", str(space), *common, names=("space.yaml:", "invalid YAML"))
    ws.run("sweep", str(ws.root / "none.yaml"), *common, names=("none.yaml", "not found"))
    good = _space(ws)
    for flag, value in (("--n-trials", "-3"), ("--n-trials", "0"), ("--workers", "-2")):
        ws.run("sweep", str(good), *common, flag, value, names=(flag, "whole number"))


def test_a_sweep_on_an_empty_cache_stops_before_its_first_trial(ws: Workspace, data_root: Path) -> None:
    empty = ws.root / "empty-cache"
    err = ws.run("sweep", str(REPO / "experiments" / "sweeps" / "granalign_qvh.yaml"), "--n-trials", "3",
                 "--cache", str(empty), "--data-root", str(data_root), code=2, names=("cache cannot feed",))
    assert "- missing: captions_agnostic/" in err
    assert not empty.exists() and not (ws.root / "optuna.db").exists() and not (ws.root / "mlflow.db").exists()


# ============================================================================ stores and cache files
def test_damaged_databases_are_named(ws: Workspace, demo_cache: Path) -> None:
    space = _space(ws)
    garbage = b"this is not a database" * 10
    opt = ws.write("optuna.db", garbage)
    ws.run("sweep", str(space), "--demo", "--cache", str(demo_cache), "--n-trials", "1",
           names=(str(opt), "not an SQLite database"))
    opt.unlink()
    ml = ws.write("mlflow.db", garbage)
    ws.run("sweep", str(space), "--demo", "--cache", str(demo_cache), "--n-trials", "1",
           names=(str(ml), "not an SQLite database"))
    ws.run("table", "3", "--from-mlflow", names=(str(ml), "not an SQLite database"))
    assert not (ws.root / "optuna.db").exists()  # the MLflow store is checked before Optuna's is made
    ml.unlink()
    cache = ws.root / "c"
    (cache).mkdir()
    (cache / "cache.sqlite").write_bytes(garbage)
    ws.run("cache", "stats", "--cache", str(cache), names=("cache.sqlite", "not an SQLite database"))
    ws.run("run", str(REPO / "experiments" / "granalign_qvh_minigptv2.yaml"), "--cache", str(cache),
           "--limit", "5", names=("cache.sqlite", "not an SQLite database"))


def test_unknown_store_schemes_and_folders(ws: Workspace, demo_cache: Path) -> None:
    space = _space(ws)
    common = ("--demo", "--cache", str(demo_cache), "--n-trials", "1")
    ws.run("sweep", str(space), *common, "--storage", "foo://x", names=("foo://x", "unknown scheme"))
    ws.run("sweep", str(space), *common, "--tracking-uri", "foo://x", names=("foo://x", "unknown scheme"))
    ws.run("table", "3", "--demo", "--cache", str(demo_cache), "--tracking-uri", "foo://x",
           names=("foo://x", "unknown scheme"))
    missing = ws.root / "no" / "such" / "dir" / "x.db"
    ws.run("sweep", str(space), *common, "--storage", f"sqlite:///{missing}", names=(str(missing), "does not exist"))
    afile = ws.write("afile", "x")
    ws.run("cache", "stats", "--cache", str(afile / "cache"), names=(str(afile / "cache"),))
    ws.run("run", str(REPO / "experiments" / "demo.yaml"), "--cache", str(demo_cache), "--out",
           str(afile / "out"), names=("afile",))


@pytest.fixture()
def small_cache(tmp_path: Path) -> tuple[Path, Callable[[], np.ndarray]]:
    """A cache with one embedding matrix, and a reader of it."""
    from harness.cache.store import Cache

    root = tmp_path / "small"
    Cache(root).put_embeddings("emb", ["a", "b"], np.ones((2, 4), dtype=np.float32))

    def read() -> np.ndarray:
        return Cache(root, readonly=True).get_embeddings("emb", ["a", "b"])
    return root, read


def test_an_embedding_changed_in_place_is_caught(small_cache: tuple[Path, Callable[[], np.ndarray]]) -> None:
    """Same size, same mtime, other bytes (NaNs): every read is hashed, so it is caught."""
    from harness.cache.store import CacheCorrupt

    root, read = small_cache
    assert read().sum() == 8
    (npy,) = root.rglob("*.npy")
    st = npy.stat()
    data = bytearray(npy.read_bytes())
    data[-16:] = np.full(4, np.nan, dtype=np.float32).tobytes()
    npy.write_bytes(bytes(data))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert npy.stat().st_size == st.st_size and npy.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(CacheCorrupt, match=rf"{npy.name}: embedding matrix changed"):
        read()
    npy.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CacheCorrupt, match=rf"{npy.name}"):
        read()
    npy.unlink()
    with pytest.raises(CacheCorrupt, match=rf"{npy.name}: embedding matrix missing"):
        read()


def test_non_finite_matrices_are_refused(tmp_path: Path) -> None:
    from harness.cache.store import Cache

    cache = Cache(tmp_path / "c")
    with pytest.raises(ValueError, match="non-finite"):
        cache.put_embeddings("emb", ["a"], np.array([[np.nan, 1.0]]))
    assert not list((tmp_path / "c").rglob("*.npy"))


def test_files_follow_the_umask(tmp_path: Path) -> None:
    from harness.core.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_run_folder_follows_the_umask(ws: Workspace, demo_cache: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["run", str(REPO / "experiments" / "demo.yaml"), "--cache", str(demo_cache),
                     "--out", str(ws.root / "r")]) == 0
    finally:
        os.umask(old)
    assert (ws.root / "r").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (ws.root / "r").iterdir()} == {0o644}
    metrics = (ws.root / "r" / "metrics.json").read_text()
    assert "NaN" not in metrics and json.loads(metrics)


def test_replace_folder_leaves_one_folder() -> None:
    """The run folder's replacement keeps the old folder until the new one is complete."""
    from harness.core.io import replace_folder

    base = Path(__import__("tempfile").mkdtemp())
    try:
        (base / "new").mkdir()
        (base / "new" / "f").write_text("new")
        (base / "dest").mkdir()
        (base / "dest" / "f").write_text("old")
        replace_folder(base / "new", base / "dest")
        assert (base / "dest" / "f").read_text() == "new"
        assert sorted(p.name for p in base.iterdir()) == ["dest"]
    finally:
        shutil.rmtree(base)


def test_an_import_without_its_release_creates_no_cache(ws: Workspace, data_root: Path) -> None:
    root = ws.root / "data"
    (root / "qvhighlights").mkdir(parents=True)
    shutil.copy(data_root / ANNOTATIONS, root / ANNOTATIONS)
    cache = ws.root / "new-cache"
    common = ("cache", "import", "--dataset", "qvhighlights:val", "--data-root", str(root), "--cache", str(cache))
    ws.run(*common, "--what", "paraphrases", names=("baichuan2_paraphrases_val.jsonl", "missing data file"))
    ws.run(*common, "--what", "captions:minigptv2", names=("captions/minigptv2/val", "not found"))
    ws.run(*common, "--what", "bogus", names=("bogus", "unknown import target"))
    assert not cache.exists()


def test_an_embed_into_an_unwritable_place_is_named(ws: Workspace, data_root: Path) -> None:
    afile = ws.write("afile", "x")
    ws.run("cache", "embed", "--dataset", "qvhighlights:val", "--data-root", str(data_root), "--cache",
           str(afile / "cache"), names=(str(afile / "cache"), "cannot create the cache folder"))


def _open_tracker(uri: str, name: str) -> str:
    from harness.report.tracking import Tracker

    return Tracker(name, uri).experiment_id


def test_two_processes_creating_one_mlflow_store_do_not_race(tmp_path: Path) -> None:
    """MLflow migrates a fresh SQLite store on first use; two sweeps started together used
    to fail on `_alembic_tmp_experiments`. Schema creation now happens under a file lock."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with ctx.Pool(2) as pool:
        ids = pool.starmap(_open_tracker, [(uri, "sweep-a"), (uri, "sweep-a")])
    assert ids[0] == ids[1]


def test_out_that_holds_other_files_is_refused_and_kept(ws: Workspace, demo_cache: Path) -> None:
    """A run replaces an earlier run folder at --out, never a folder of other files."""
    mine = ws.write("results/notes.txt", "my notes")
    ws.run("run", str(REPO / "experiments" / "demo.yaml"), "--cache", str(demo_cache), "--out",
           str(ws.root / "results"), names=("results", "notes.txt", "new folder or an earlier run folder"))
    assert mine.read_text() == "my notes"
    afile = ws.write("a-file", "x")
    ws.run("run", str(REPO / "experiments" / "demo.yaml"), "--cache", str(demo_cache), "--out", str(afile),
           names=("a-file", "not a folder"))
    out = ws.root / "r"
    for _ in range(2):  # an earlier run folder is replaced whole
        assert main(["run", str(REPO / "experiments" / "demo.yaml"), "--cache", str(demo_cache), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "predictions.jsonl", "run_info.json"]
    assert sorted(p.name for p in ws.root.iterdir() if p.name.startswith(".")) == []


def test_a_cache_this_user_cannot_write_is_read_unless_it_has_unmerged_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cache.store as store_mod
    from harness.cache.store import Cache
    from harness.core.errors import HarnessError

    root = tmp_path / "shared"
    writer = Cache(root)
    writer.put_embeddings("emb", ["a"], np.ones((1, 2), dtype=np.float32))
    writer.close()  # the last connection merges the WAL into the database
    real = os.access
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: False if mode == os.W_OK else real(p, mode))
    assert Cache(root, readonly=True).get_embeddings("emb", ["a"]).sum() == 2  # read as immutable
    (root / "cache.sqlite-wal").write_bytes(b"x" * 100)
    with pytest.raises(HarnessError, match="unmerged writes"):
        Cache(root, readonly=True).get_embeddings("emb", ["a"])
    with pytest.raises(HarnessError, match="read-only for this user"):
        Cache(root).put_embeddings("emb", ["b"], np.ones((1, 2), dtype=np.float32))


def test_passwords_never_reach_an_error_line(ws: Workspace, demo_cache: Path) -> None:
    space = _space(ws)
    err = ws.run("sweep", str(space), "--demo", "--cache", str(demo_cache), "--storage",
                 "postgres://ana:s3cret@db/x?password=s3cret", names=("unknown scheme", "ana:***@db"))
    assert "s3cret" not in err
