"""Dataset loaders on the real files, and their errors on malformed input (fake roots)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from harness.core.errors import DataError
from harness.core.query import Query
from harness.core.registry import RegistryError
from harness.data import DATA_ENV, data_root, load_dataset

# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize(
    ("name", "n_queries", "n_videos"),
    [
        ("qvhighlights:val", 1550, 1519),
        ("charades_sta:test", 3720, 1334),
        ("activitynet:val_1", 17505, 4917),
        ("activitynet:val_2", 17031, 4885),
    ],
)
def test_real_split_sizes(data_root: Path, name: str, n_queries: int, n_videos: int) -> None:
    ds = load_dataset(name, data_root)
    assert ds.name == name
    assert (len(ds), len(ds.videos)) == (n_queries, n_videos)
    assert len({q.qid for q in ds.queries}) == n_queries


def test_qvhighlights_record_matches_raw_line(data_root: Path) -> None:
    path = data_root / "qvhighlights" / "highlight_val_release.jsonl"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    ds = load_dataset("qvhighlights:val", data_root)
    row, rec = raw[100], ds.queries[100]
    assert (rec.qid, rec.vid, rec.query, rec.duration) == (
        row["qid"],
        row["vid"],
        row["query"],
        row["duration"],
    )
    assert [list(w) for w in rec.windows] == row["relevant_windows"]
    assert rec.saliency is not None
    assert list(rec.saliency) == row["relevant_clip_ids"]
    assert [list(s) for s in rec.saliency.values()] == row["saliency_scores"]
    assert rec.to_gt_row() == {k: row[k] for k in rec.to_gt_row()}


def test_charades_record_matches_raw_line(data_root: Path) -> None:
    folder = data_root / "charades_sta"
    lines = [ln for ln in (folder / "charades_sta_test.txt").read_text().splitlines() if ln.strip()]
    head, sentence = lines[2000].split("##")
    vid, start, end = head.split()
    with open(folder / "Charades_v1_test.csv", newline="") as f:
        length = {r["id"]: float(r["length"]) for r in csv.DictReader(f)}[vid]
    rec = load_dataset("charades_sta:test", data_root).queries[2000]
    assert rec == Query(2000, vid, sentence.strip(), length, ((float(start), float(end)),))


def test_activitynet_record_matches_raw(data_root: Path) -> None:
    raw = json.loads((data_root / "activitynet" / "val_2.json").read_text())
    vid = list(raw)[1]
    before = sum(len(v["sentences"]) for v in list(raw.values())[:1])
    rec = load_dataset("activitynet:val_2", data_root).queries[before + 2]
    (s, e) = raw[vid]["timestamps"][2]
    assert rec == Query(
        before + 2, vid, raw[vid]["sentences"][2].strip(), raw[vid]["duration"], ((s, e),)
    )


# --------------------------------------------------------------------------- registry and root


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as err:
        load_dataset("qvhighlight:val", tmp_path)
    msg = str(err.value)
    assert "unknown dataset 'qvhighlight:val'" in msg
    for name in ("activitynet:val_1", "activitynet:val_2", "charades_sta:test", "qvhighlights:val"):
        assert name in msg


def test_data_root_needs_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DataError, match=f"set {DATA_ENV}"):
        data_root()
    with pytest.raises(DataError, match="is not a directory"):
        data_root(tmp_path / "nope")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_root() == tmp_path


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing data file .*highlight_val_release\.jsonl"):
        load_dataset("qvhighlights:val", tmp_path)


# --------------------------------------------------------------------------- QVHighlights: bad input

QV_ROW = {
    "qid": 1,
    "query": "a dog runs",
    "duration": 150,
    "vid": "abc_0.0_150.0",
    "relevant_windows": [[10, 20]],
    "relevant_clip_ids": [5, 6],
    "saliency_scores": [[1, 2, 3], [4, 4, 4]],
}


def qv_root(tmp_path: Path, *rows: dict | str) -> Path:
    folder = tmp_path / "qvhighlights"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / "highlight_val_release.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_qvhighlights_fake_root_loads(tmp_path: Path) -> None:
    ds = load_dataset("qvhighlights:val", qv_root(tmp_path, QV_ROW, "", {**QV_ROW, "qid": 2}))
    assert [q.qid for q in ds.queries] == [1, 2]  # the blank line is skipped
    assert ds.queries[0].saliency == {5: (1, 2, 3), 6: (4, 4, 4)}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"qid": 2, "query": ', r"highlight_val_release\.jsonl:2: invalid JSON"),
        ({k: v for k, v in QV_ROW.items() if k != "vid"}, r"\.jsonl:2: missing field 'vid'"),
        ({**QV_ROW, "qid": "2"}, r"\.jsonl:2: field 'qid' should be int"),
        (
            {**QV_ROW, "relevant_windows": [[20, 10]]},
            r"\.jsonl:2: .*\[20, 10\] that ends before it starts",
        ),
        (
            {**QV_ROW, "relevant_windows": []},
            r"\.jsonl:2: field 'relevant_windows' should be a non-empty list",
        ),
        ({**QV_ROW, "relevant_windows": [[1, 2, 3]]}, r"\.jsonl:2: .*expected \[start, end\]"),
        ({**QV_ROW, "duration": 0}, r"\.jsonl:2: field 'duration' = 0, expected seconds in \(0, 86400\]"),
        ({**QV_ROW, "saliency_scores": [[1, 2, 3]]}, r"\.jsonl:2: relevant_clip_ids has 2 entries"),
        ({**QV_ROW, "saliency_scores": [[1, 2, 3], 4]}, r"\.jsonl:2: saliency_scores\[1\] is 4"),
        ({**QV_ROW, "relevant_clip_ids": [5, "6"]}, r"\.jsonl:2: relevant_clip_ids\[1\]"),
        ({**QV_ROW, "qid": 1}, r"query id 1 appears twice"),
        ("[1, 2]", r"\.jsonl:2: expected a JSON object"),
    ],
)
def test_qvhighlights_bad_input(tmp_path: Path, bad: dict | str, message: str) -> None:
    root = qv_root(tmp_path, QV_ROW, bad)
    with pytest.raises(DataError, match=message):
        load_dataset("qvhighlights:val", root)


# --------------------------------------------------------------------------- Charades-STA: bad input


def charades_root(
    tmp_path: Path, lines: list[str], csv_text: str = "id,length\nAAAAA,30.5\nBBBBB,12\n"
) -> Path:
    folder = tmp_path / "charades_sta"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Charades_v1_test.csv").write_text(csv_text)
    (folder / "charades_sta_test.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_charades_fake_root_loads(tmp_path: Path) -> None:
    root = charades_root(
        tmp_path, ["AAAAA 1.5 4.0##a person sits.", "", "BBBBB 0 11.9##Someone runs ## fast"]
    )
    ds = load_dataset("charades_sta:test", root)
    assert ds.queries == (
        Query(0, "AAAAA", "a person sits.", 30.5, ((1.5, 4.0),)),
        Query(1, "BBBBB", "Someone runs ## fast", 12.0, ((0.0, 11.9),)),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "AAAAA 1.5 4.0 a person sits.",
            r"charades_sta_test\.txt:2: expected 'VID start end##sentence'",
        ),
        (
            "AAAAA 1.5##a person sits.",
            r"charades_sta_test\.txt:2: expected 'VID start end##sentence'",
        ),
        ("AAAAA 1.5 4.0##   ", r"charades_sta_test\.txt:2: expected 'VID start end##sentence'"),
        (
            "AAAAA one 4.0##a person sits.",
            r"charades_sta_test\.txt:2: start and end should be seconds",
        ),
        ("AAAAA 5.0 4.0##a person sits.", r"charades_sta_test\.txt:2: .*ends before it starts"),
        (
            "ZZZZZ 1.5 4.0##a person sits.",
            r"charades_sta_test\.txt:2: video 'ZZZZZ' has no duration in Charades_v1_test\.csv",
        ),
    ],
)
def test_charades_bad_line(tmp_path: Path, line: str, message: str) -> None:
    root = charades_root(tmp_path, ["AAAAA 1.5 4.0##a person sits.", line])
    with pytest.raises(DataError, match=message):
        load_dataset("charades_sta:test", root)


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        (
            "vid,seconds\nAAAAA,30\n",
            r"Charades_v1_test\.csv:1: expected a header with columns 'id' and 'length'",
        ),
        (
            "id,length\nAAAAA,30\nBBBBB,long\n",
            r"Charades_v1_test\.csv:3: column 'length' should be seconds",
        ),
    ],
)
def test_charades_bad_csv(tmp_path: Path, csv_text: str, message: str) -> None:
    root = charades_root(tmp_path, ["AAAAA 1.5 4.0##a person sits."], csv_text)
    with pytest.raises(DataError, match=message):
        load_dataset("charades_sta:test", root)


# --------------------------------------------------------------------------- ActivityNet: bad input


def anet_root(tmp_path: Path, data: object, split: str = "val_1") -> Path:
    folder = tmp_path / "activitynet"
    folder.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data, indent=1)
    (folder / f"{split}.json").write_text(text)
    return tmp_path


GOOD_VIDEO = {
    "duration": 50.0,
    "timestamps": [[0, 10.5], [8, 50]],
    "sentences": ["A man talks.", " He jumps."],
}


def test_activitynet_fake_root_loads(tmp_path: Path) -> None:
    root = anet_root(tmp_path, {"v_a": GOOD_VIDEO, "v_b": {**GOOD_VIDEO, "duration": 51}}, "val_2")
    ds = load_dataset("activitynet:val_2", root)
    assert [(q.qid, q.vid, q.query) for q in ds.queries] == [
        (0, "v_a", "A man talks."),
        (1, "v_a", "He jumps."),
        (2, "v_b", "A man talks."),
        (3, "v_b", "He jumps."),
    ]
    assert ds.queries[1].windows == ((8.0, 50.0),)


@pytest.mark.parametrize(
    ("video", "message"),
    [
        (
            {**GOOD_VIDEO, "sentences": ["only one"]},
            r"val_1\.json: video v_b: 2 timestamps but 1 sentences",
        ),
        (
            {k: v for k, v in GOOD_VIDEO.items() if k != "duration"},
            r"video v_b: missing field 'duration'",
        ),
        (
            {**GOOD_VIDEO, "timestamps": [[0, 10], [9, 3]]},
            r"video v_b sentence 1: .*ends before it starts",
        ),
        (
            {**GOOD_VIDEO, "timestamps": [[0, 10], [3]]},
            r"video v_b sentence 1: .*expected \[start, end\]",
        ),
        ({**GOOD_VIDEO, "sentences": ["ok", 7]}, r"video v_b: sentence 1 should be a string"),
        ({**GOOD_VIDEO, "duration": -1}, r"video v_b: field 'duration' = -1, expected seconds in \(0, 86400\]"),
        ([1, 2], r"video v_b: expected an object"),
    ],
)
def test_activitynet_bad_video(tmp_path: Path, video: object, message: str) -> None:
    root = anet_root(tmp_path, {"v_a": GOOD_VIDEO, "v_b": video})
    with pytest.raises(DataError, match=message):
        load_dataset("activitynet:val_1", root)


def test_activitynet_bad_json_and_shape(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"val_1\.json:3: invalid JSON"):
        load_dataset("activitynet:val_1", anet_root(tmp_path, '{\n "v_a": {\n  "duration": ,\n}'))
    with pytest.raises(DataError, match=r"val_1\.json: expected an object"):
        load_dataset("activitynet:val_1", anet_root(tmp_path, "[1, 2]"))
