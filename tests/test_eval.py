"""The evaluators: conformance with the official QVHighlights numbers, hand-worked cases,
prediction files and the `granalign eval` command."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cli import main
from harness.core.errors import DataError
from harness.core.query import Query
from harness.data import load_dataset
from harness.data.qvhighlights import parse_qvhighlights_row
from harness.eval import evaluate
from harness.eval.predictions import (
    check_prediction_ids,
    load_predictions,
    parse_prediction_row,
    write_predictions,
)
from harness.eval.qvhighlights import IOU_THRESHOLDS, highlight_ap, mr_ap
from harness.eval.windows import Windows
from tests.reference_impl import hl_ap, query_ap

REF = Path("qvhighlights") / "eval_reference"


def q(
    qid: int, windows: list[list[float]], duration: float = 150.0, saliency: dict | None = None
) -> Query:
    return Query(
        qid, f"v{qid}", f"query {qid}", duration, tuple(tuple(w) for w in windows), saliency
    )


def pred(
    qid: int, windows: list[list[float]], saliency: list[float] | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {"qid": qid, "pred_relevant_windows": windows}
    if saliency is not None:
        row["pred_saliency_scores"] = saliency
    return row


def leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------- conformance


@pytest.fixture(scope="module")
def reference(data_root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our metrics, the official evaluator's) on the reference prediction file."""
    dataset = load_dataset("qvhighlights:val", data_root)
    preds = load_predictions(data_root / REF / "sample_val_preds.jsonl")
    official = json.loads((data_root / REF / "sample_val_preds_metrics_raw.json").read_text())
    return evaluate("qvhighlights:val", dataset.queries, preds), official


def test_every_official_metric_matches_to_two_decimals(reference: tuple[dict, dict]) -> None:
    ours, official = reference
    ours_flat, official_flat = leaves(ours), leaves(official)
    assert len(official_flat) == 14 + 6 + 4 * 21  # brief + 3 HL levels + 4 splits x (11 + 10)
    missing = sorted(set(official_flat) - set(ours_flat))
    assert not missing
    wrong = {
        k: (ours_flat[k], v) for k, v in official_flat.items() if abs(ours_flat[k] - v) > 0.005
    }
    assert not wrong


def test_official_structure_and_extra_brief_keys(reference: tuple[dict, dict]) -> None:
    ours, official = reference
    assert list(ours)[0] == "brief"
    assert set(ours) == set(official)  # no "notes": every metric was computed
    assert set(ours["brief"]) == set(official["brief"]) | {"MR-full-R1@0.3", "MR-full-mIoU"}
    assert ours["brief"]["MR-full-R1@0.3"] >= ours["brief"]["MR-full-R1@0.5"]
    assert 0 < ours["brief"]["MR-full-mIoU"] < 100


# --------------------------------------------------------------------------- hand-worked: top-1


def test_top1_hand_worked() -> None:
    gt = [
        q(0, [[10, 20]]),
        q(1, [[0, 10]]),
        q(2, [[0, 10]]),
        q(3, [[20, 30]], duration=32.0),
        q(4, [[0, 10], [20, 30]]),
    ]
    preds = [
        pred(0, [[10, 20, 0.9]]),  # exact: IoU 1
        # the FIRST window counts, not the best-scored: [5,15] vs [0,10] -> 5 / 15 = 1/3
        pred(1, [[5, 15, 0.1], [0, 10, 0.9]]),
        pred(2, []),  # no prediction: IoU 0, still in the denominator
        # past the 32-s duration, not clipped: inter 8, union 20 -> 0.4 (clipped it would be 8/12)
        pred(3, [[22, 40, 0.5]]),
        # best of two GT windows: [21,31] vs [20,30] -> 9 / 11 = 0.818
        pred(4, [[21, 31, 0.5]]),
    ]
    brief = evaluate("charades_sta:test", gt, preds)["brief"]
    # IoUs [1, 1/3, 0, 0.4, 9/11]: >= 0.3 -> 4, >= 0.5 -> 2, >= 0.7 -> 2 of 5
    assert brief == {
        "R1@0.3": 80.0,
        "R1@0.5": 40.0,
        "R1@0.7": 40.0,
        "mIoU": round(100 * (1 + 1 / 3 + 0 + 0.4 + 9 / 11) / 5, 2),  # 51.03
    }


def test_top1_reports_queries_without_prediction() -> None:
    result = evaluate(
        "activitynet:val_1", [q(0, [[0, 5]]), q(1, [[0, 5]])], [pred(0, []), pred(1, [[0, 5, 1]])]
    )
    assert result["n_queries"] == 2 and result["n_without_prediction"] == 1
    assert result["brief"]["R1@0.7"] == 50.0


# --------------------------------------------------------------------------- hand-worked: QVHighlights MR


def mr_case() -> tuple[list[Query], list[dict[str, Any]]]:
    gt = [
        q(1, [[0, 10], [20, 40]]),  # one short (10 s) and one middle (20 s) window
        q(2, [[0, 40]]),  # long
        q(3, [[10, 25]]),  # middle
        q(4, [[100, 110]], duration=112.0),  # short
    ]
    preds = [
        # file order; by score: [0,10] .9, [0,10] .7 (duplicate), [20,40] .5
        pred(1, [[20, 40, 0.5], [0, 10, 0.9], [0, 10, 0.7]]),
        # equal scores keep file order: [0,20] (IoU 0.5) ranks before [0,40] (IoU 1)
        pred(2, [[0, 20, 0.8], [0, 40, 0.8]]),
        pred(3, []),  # no windows: left out of mAP, a miss for R1
        pred(4, [[100, 120, 0.9]]),  # past the 112-s duration: IoU 10/20 = 0.5 (clipped 10/12)
    ]
    return gt, preds


def test_qvhighlights_mr_hand_worked_full() -> None:
    gt, preds = mr_case()
    res = evaluate("qvhighlights:val", gt, preds)
    # AP, every threshold, q1: ranked hits [1, 0, 1] (the duplicate finds GT [0,10] taken);
    #   precision [1, 1/2, 2/3], recall steps 1/2 at ranks 1 and 3 -> 1/2 * 1 + 1/2 * 2/3 = 5/6
    # q2 @0.5: [0,20] hits (IoU 0.5), [0,40] finds the GT taken -> AP 1;
    #    @>=0.55: [0,20] misses, [0,40] hits at rank 2 -> AP 1/2
    # q4 @0.5: AP 1; above: 0.   q3 has no windows: skipped.
    # mAP@0.5 = (5/6 + 1 + 1) / 3 = 94.44; mAP@t>0.5 = (5/6 + 1/2 + 0) / 3 = 44.44
    # average = (94.444 + 9 * 44.444) / 10 = 49.44
    full = res["full"]
    assert full["MR-mAP"]["0.5"] == 94.44
    assert all(full["MR-mAP"][str(t)] == 44.44 for t in IOU_THRESHOLDS[1:])
    assert full["MR-mAP"]["average"] == 49.44
    # R1, first window: q1 [20,40] exact -> 1, q2 [0,20] -> 0.5, q3 none -> 0, q4 -> 0.5
    assert full["MR-R1"]["0.5"] == 75.0
    assert all(full["MR-R1"][str(t)] == 25.0 for t in IOU_THRESHOLDS[1:])
    brief = res["brief"]
    assert brief["MR-full-R1@0.3"] == 75.0
    assert brief["MR-full-mIoU"] == 50.0  # (1 + 0.5 + 0 + 0.5) / 4
    assert brief["MR-full-mAP@0.75"] == 44.44
    assert not any(k.startswith("HL") for k in brief)
    assert res["notes"] == [
        "no pred_saliency_scores in the predictions: highlight metrics (HL-*) skipped"
    ]


def test_qvhighlights_mr_hand_worked_splits() -> None:
    gt, preds = mr_case()
    res = evaluate("qvhighlights:val", gt, preds)
    # short (0,10]: q1 with GT [0,10] only and q4.
    #   q1: ranked [0,10] hit, duplicate miss, [20,40] miss -> AP 1; R1 first window [20,40] -> 0
    #   q4: AP 1 @0.5 else 0; R1 IoU 0.5
    assert res["short"]["MR-mAP"]["0.5"] == 100.0
    assert res["short"]["MR-mAP"]["0.55"] == 50.0
    assert res["short"]["MR-mAP"]["average"] == 55.0  # (100 + 9 * 50) / 10
    assert res["short"]["MR-R1"]["0.5"] == 50.0 and res["short"]["MR-R1"]["0.55"] == 0.0
    # middle (10,30]: q1 with GT [20,40] only (hit at rank 3 -> AP 1/3) and q3 (no windows)
    assert set(res["middle"]["MR-mAP"].values()) == {33.33}
    assert set(res["middle"]["MR-R1"].values()) == {50.0}  # q1 exact, q3 miss
    # long (30,150]: q2 only
    assert res["long"]["MR-mAP"]["average"] == 55.0
    assert res["long"]["MR-R1"]["0.5"] == 100.0 and res["long"]["MR-R1"]["0.55"] == 0.0
    assert (
        res["brief"]["MR-short-mAP"],
        res["brief"]["MR-middle-mAP"],
        res["brief"]["MR-long-mAP"],
    ) == (
        55.0,
        33.33,
        55.0,
    )


def test_map_looks_at_the_first_ten_windows_in_file_order() -> None:
    # ten misses, then an exact window with the best score: cut before sorting -> AP 0
    windows = [[50.0 + 2 * k, 60.0 + 2 * k, 0.5] for k in range(10)] + [[0.0, 10.0, 0.99]]
    res = evaluate("qvhighlights:val", [q(1, [[0, 10]])], [pred(1, windows)])
    assert res["brief"]["MR-full-mAP"] == 0.0


def test_equal_iou_gt_windows_the_later_one_is_matched_as_officially() -> None:
    """GT [0,10] and [2,12]; the first prediction [1,11] overlaps both at 9/11 = 0.818. The
    official loop walks the GT windows by a stable ascending argsort of IoU, reversed: the
    LATER window [2,12] is taken, and [0,9] then finds [0,10] free at IoU 0.9. Had the
    first window won, [0,9] would be left with [2,12] at 7/12 = 0.583."""
    gt = [q(1, [[0, 10], [2, 12]])]
    preds = [pred(1, [[1, 11, 0.9], [0, 9, 0.8]])]
    m_ap = evaluate("qvhighlights:val", gt, preds)["full"]["MR-mAP"]
    # t = 0.5, 0.55: both hit either way -> 1; t = 0.6 .. 0.8: both hit (later rule) -> 1
    # (first rule: 0.5); t = 0.85, 0.9: [1,11] misses, [0,9] hits at rank 2 -> 1/4; 0.95: 0
    want = {0.5: 1.0, 0.55: 1.0, 0.6: 1.0, 0.65: 1.0, 0.7: 1.0, 0.75: 1.0, 0.8: 1.0, 0.85: 0.25, 0.9: 0.25,
            0.95: 0.0}
    assert {t: m_ap[str(t)] for t in IOU_THRESHOLDS} == {t: 100 * v for t, v in want.items()}
    assert m_ap["average"] == 75.0  # (7 + 2 / 4) / 10
    # the same query through the array path a trial takes, and through the reference loops
    ap = mr_ap(Windows.from_lists([[[1, 11, 0.9], [0, 9, 0.8]]], 10), Windows.from_lists([[[0, 10], [2, 12]]]))
    np.testing.assert_allclose(ap[0], [want[t] for t in IOU_THRESHOLDS])
    assert [query_ap([[0, 10], [2, 12]], [[1, 11, 0.9], [0, 9, 0.8]], t) for t in IOU_THRESHOLDS] == [
        want[t] for t in IOU_THRESHOLDS]


def test_equal_iou_gt_windows_among_many_the_later_one_is_matched() -> None:
    """The same tie in a query with five GT windows (the matcher's larger group) and in one
    with three (the small group): each must find the later window."""
    gts = [[[0, 10], [2, 12], [40, 50], [60, 70], [80, 90]], [[0, 10], [2, 12], [40, 50]]]
    preds = [[[1, 11, 0.9], [0, 9, 0.8]], [[1, 11, 0.9], [0, 9, 0.8]]]
    ap = mr_ap(Windows.from_lists(preds, 10), Windows.from_lists(gts))
    # 2 of 5 (resp. 3) GT found at ranks 1 and 2 for t <= 0.8
    np.testing.assert_allclose(ap[:, IOU_THRESHOLDS.index(0.7)], [2 / 5, 2 / 3])


def test_empty_split_gives_nan_like_the_official_code() -> None:
    res = evaluate("qvhighlights:val", [q(1, [[0, 4]])], [pred(1, [[0, 4, 1.0]])])
    assert res["short"]["MR-mAP"]["average"] == 100.0
    assert math.isnan(res["long"]["MR-mAP"]["average"])


# --------------------------------------------------------------------------- hand-worked: highlights


def hl_case() -> tuple[list[Query], list[dict[str, Any]]]:
    gt = [
        # 10 s -> grid of 5 clips; scores per clip (annotators 1, 2, 3)
        q(0, [[2, 6]], 10.0, {1: (4, 2, 0), 2: (3, 3, 1), 4: (2, 4, 4)}),
        # 9 s -> int(4.5) = 4 clips; only clip 3 is positive at any level
        q(1, [[6, 8]], 9.0, {0: (1, 1, 1), 3: (4, 4, 4)}),
        # 4 s -> 2 clips
        q(2, [[0, 2]], 4.0, {0: (0, 0, 0), 1: (4, 4, 4)}),
    ]
    preds = [
        # clips 2 and 3 tie at 0.5: one threshold
        pred(0, [[2, 6, 1]], [0.1, 0.9, 0.5, 0.5, 0.2]),
        # 3 scores for 4 clips: clip 3 gets 0 and ranks last
        pred(1, [[6, 8, 1]], [0.3, 0.2, 0.1]),
        # top score at index 2, beyond the 2-clip grid: a Hit1 miss; AP uses [0.2, 0.1]
        pred(2, [[0, 2, 1]], [0.2, 0.1, 0.9]),
    ]
    return gt, preds


def test_highlight_hand_worked() -> None:
    gt, preds = hl_case()
    res = evaluate("qvhighlights:val", gt, preds)
    # q0 ranking: {c1} .9, {c2, c3} .5, {c4} .2, {c0} .1 -> thresholds at ranks 1, 3, 4, 5.
    #  Fair (>=2): a1 positives c1 c2 c4: precision 1, 2/3, 3/4, 3/5; levels at ranks 1, 3, 4
    #   -> (max(1, ...) + max(2/3, 3/4, 3/5) + 3/4) / 3 = (1 + .75 + .75) / 3 = 5/6
    #   (breaking the tie into two thresholds would give (1 + 1 + .75) / 3 instead)
    #   a2 same as a1 -> 5/6; a3 positive c4 only -> 1/4.   q0 Fair = (5/6 + 5/6 + 1/4) / 3
    #  Good (>=3): a1 c1 c2 -> (1 + 2/3) / 2 = 5/6; a2 c2 c4 -> (1/2 + 1/2) / 2 = 1/2; a3 1/4
    #  VeryGood (>=4): a1 c1 -> 1; a2 c4 -> 1/4; a3 c4 -> 1/4
    # q1: clip 3 (padded score 0) ranks 4th for everyone at every level -> 1/4
    # q2: grid scores [.2, .1]: positive clip 1 ranks 2nd -> 1/2 at every level
    q0 = {
        "Fair": (5 / 6 + 5 / 6 + 1 / 4) / 3,
        "Good": (5 / 6 + 1 / 2 + 1 / 4) / 3,
        "VeryGood": 1.5 / 3,
    }
    for level, ap0 in q0.items():
        assert res[f"HL-min-{level}"]["HL-mAP"] == round(100 * (ap0 + 0.25 + 0.5) / 3, 2)
        # Hit1: q0's top clip c1 is positive for annotator 1 at every level; q1's top clip 0
        # scores 1; q2's top index 2 is off the grid (not clip 1, the positive last one)
        assert res[f"HL-min-{level}"]["HL-Hit1"] == 33.33
    assert res["brief"]["HL-min-Fair-mAP"] == 46.3
    assert res["brief"]["HL-min-Good-mAP"] == 42.59
    assert res["brief"]["HL-min-VeryGood-mAP"] == 41.67
    assert "notes" not in res


def test_all_negative_and_all_positive_labels() -> None:
    gt = [
        q(0, [[0, 4]], 4.0, {0: (0, 0, 0), 1: (0, 0, 0)}),
        q(1, [[0, 4]], 4.0, {0: (4, 4, 4), 1: (4, 4, 4)}),
    ]
    preds = [pred(0, [[0, 4, 1]], [0.2, 0.1]), pred(1, [[0, 4, 1]], [0.1, 0.2])]
    res = evaluate("qvhighlights:val", gt, preds)
    assert res["HL-min-Fair"] == {"HL-mAP": 50.0, "HL-Hit1": 50.0}  # AP 0 and 1


def test_hit1_top_clip_beyond_the_grid_is_a_miss() -> None:
    # 4 s -> 2 clips; the top score sits at index 2, past the last (positive) clip
    gt = [q(0, [[0, 4]], 4.0, {0: (0, 0, 0), 1: (4, 4, 4)})]
    res = evaluate("qvhighlights:val", gt, [pred(0, [[0, 4, 1]], [0.2, 0.1, 0.9])])
    assert res["HL-min-VeryGood"] == {"HL-mAP": 50.0, "HL-Hit1": 0.0}


def test_partial_saliency_is_an_error() -> None:
    gt, preds = hl_case()
    del preds[1]["pred_saliency_scores"]
    with pytest.raises(
        DataError, match=r"1 of 3 predictions lack pred_saliency_scores \(e.g. qid \[1\]\)"
    ):
        evaluate("qvhighlights:val", gt, preds)


# --------------------------------------------------------------------------- vectorised == naive


def naive_ap(gt: list[list[float]], windows: list[list[float]], t: float) -> float:
    """One query's VOC AP with plain loops: the rules read straight off METHOD.md."""
    ranked = sorted(windows[:10], key=lambda w: -w[2])
    taken: set[int] = set()
    hits = []
    for s, e, _ in ranked:
        ious = []
        for j, (gs, ge) in enumerate(gt):
            inter = max(0.0, min(e, ge) - max(s, gs))
            ious.append((inter / ((e - s) + (ge - gs) - inter), j))
        free = [(iou, j) for iou, j in ious if j not in taken and iou >= t]
        if free:
            taken.add(max(free)[1])
        hits.append(bool(free))
    ap, tp = 0.0, 0
    for k, hit in enumerate(hits):
        if hit:
            tp += 1
            best = max(sum(hits[: m + 1]) / (m + 1) for m in range(k, len(hits)))
            ap += best / len(gt)
    return ap


def test_vectorised_mr_ap_equals_loops() -> None:
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(200):
        starts = rng.integers(0, 20, rng.integers(1, 5)) * 2.0
        gts.append([[s, s + 2.0 * rng.integers(1, 6)] for s in starts])
        n = rng.integers(1, 13)  # sometimes more than 10 windows
        ps = rng.integers(0, 20, n) * 2.0
        scores = rng.integers(0, 4, n) / 4  # many ties
        preds.append(
            [[s, s + 2.0 * rng.integers(1, 6), sc] for s, sc in zip(ps, scores, strict=True)]
        )
    ours = mr_ap(Windows.from_lists(preds, 10), Windows.from_lists(gts))
    ref = np.array(
        [[naive_ap(g, p, t) for t in IOU_THRESHOLDS] for g, p in zip(gts, preds, strict=True)]
    )
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_vectorised_highlight_ap_equals_the_official_recipe_by_loops() -> None:
    """Our AP against the official `get_ap` recipe written with loops (tests/reference_impl.py:
    sklearn's precision-recall curve, one threshold per distinct score), ties included."""
    rng = np.random.default_rng(1)
    nq, width = 150, 16
    n = rng.integers(1, width + 1, nq)
    scores = rng.integers(0, 5, (nq, width)).astype(float)
    labels = (rng.random((nq, width, 3)) < 0.3).astype(float)
    for i in range(nq):
        scores[i, n[i] :] = 0
        labels[i, n[i] :] = 0
    ours = highlight_ap(scores, labels, n)
    ref = [[hl_ap(list(labels[i, : n[i], a]), list(scores[i, : n[i]])) for a in range(3)] for i in range(nq)]
    np.testing.assert_allclose(ours, np.array(ref), atol=1e-12)


def test_loop_highlight_ap_by_hand() -> None:
    # scores .9 .5 .5 .2, labels 1 0 1 1: thresholds .9 (P 1, R 1/3), .5 (P 2/3, R 2/3),
    # .2 (P 3/4, R 1); interpolated at each new recall: 1, max(2/3, 3/4), 3/4 -> 5/6
    assert hl_ap([1.0, 0.0, 1.0, 1.0], [0.9, 0.5, 0.5, 0.2]) == pytest.approx(5 / 6)
    assert hl_ap([0.0, 0.0], [0.3, 0.1]) == 0.0 and hl_ap([1.0, 1.0], [0.3, 0.1]) == 1.0


# --------------------------------------------------------------------------- prediction files


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"qid": 1, "query": "x", "vid": "v", "pred_relevant_windows": [[0, 2, 0.5]]})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"qid": 2, "pred_relevant_windows": [[0, 2, 0.5]', r"preds\.jsonl:2: invalid JSON"),
        ('{"qid": 2}', r"preds\.jsonl:2: missing field 'pred_relevant_windows'"),
        ('{"pred_relevant_windows": []}', r"preds\.jsonl:2: field 'qid' should be an integer"),
        (
            '{"qid": "2", "pred_relevant_windows": []}',
            r"preds\.jsonl:2: field 'qid' should be an integer",
        ),
        (
            '{"qid": 2, "pred_relevant_windows": [[0, 2]]}',
            r"preds\.jsonl:2: pred_relevant_windows\[0\].*\[start, end, score\]",
        ),
        (
            '{"qid": 2, "pred_relevant_windows": [[4, 2, 0.1]]}',
            r"preds\.jsonl:2: .*ends before it starts",
        ),
        (
            '{"qid": 2, "pred_relevant_windows": [], "pred_saliency_scores": []}',
            r"preds\.jsonl:2: .*pred_saliency_scores",
        ),
        (
            '{"qid": 1, "pred_relevant_windows": []}',
            r"preds\.jsonl:2: qid 1 already predicted on line 1",
        ),
        ("[1, 2]", r"preds\.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_prediction_lines(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "preds.jsonl", [GOOD, line])
    with pytest.raises(DataError, match=message):
        load_predictions(path)


def test_missing_prediction_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prediction file .*nope.jsonl not found"):
        load_predictions(tmp_path / "nope.jsonl")


def test_missing_and_extra_ids() -> None:
    gt = [q(i, [[0, 2]]) for i in range(10)]
    preds = [pred(i, []) for i in range(3, 12)]
    with pytest.raises(DataError) as err:
        check_prediction_ids(gt, preds)
    msg = str(err.value)
    assert "3 of 10 GT query ids have no prediction (e.g. [0, 1, 2])" in msg
    assert "2 predicted ids are not in the ground truth (e.g. [10, 11])" in msg
    with pytest.raises(DataError, match="no prediction"):  # evaluate() checks too
        evaluate("charades_sta:test", gt, preds)
    check_prediction_ids(gt, [pred(i, []) for i in reversed(range(10))])  # order is free
    with pytest.raises(DataError, match=r"1 ids predicted more than once \(e.g. \[4\]\)"):
        check_prediction_ids(gt, [pred(i, []) for i in [*range(10), 4]])


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    rows = [pred(7, [[0.0, 2.5, 0.9]], [0.1, 0.2]), {**pred(3, []), "vid": "abc", "query": "q"}]
    path = tmp_path / "out" / "preds.jsonl"
    write_predictions(path, rows)
    assert load_predictions(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["preds.jsonl"]  # no temp file left
    assert list(json.loads(path.read_text().splitlines()[1])) == [
        "qid",
        "query",
        "vid",
        "pred_relevant_windows",
    ]


# --------------------------------------------------------------------------- CLI


def test_cli_table_and_json(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "eval",
        "--dataset",
        "qvhighlights:val",
        "--pred",
        str(data_root / REF / "sample_val_preds.jsonl"),
        "--data-root",
        str(data_root),
    ]
    assert main(args) == 0
    table = capsys.readouterr().out
    rows = dict(line.split() for line in table.splitlines()[2:])
    assert rows["MR-full-mAP"] == "32.20" and rows["HL-min-VeryGood-Hit1"] == "55.55"
    assert main([*args, "--json"]) == 0
    official = json.loads((data_root / REF / "sample_val_preds_metrics_raw.json").read_text())
    out = json.loads(capsys.readouterr().out)
    assert out["full"] == official["full"]


def fake_charades(root: Path) -> Path:
    folder = root / "charades_sta"
    folder.mkdir(parents=True)
    (folder / "Charades_v1_test.csv").write_text("id,length\nAAAAA,30.0\nBBBBB,20.0\n")
    (folder / "charades_sta_test.txt").write_text(
        "AAAAA 0.0 10.0##a person sits.\nBBBBB 5.0 10.0##a person runs.\n"
    )
    return root


def test_cli_top1_dataset_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_charades(tmp_path / "data")
    preds = tmp_path / "preds.jsonl"
    write_predictions(preds, [pred(0, [[0, 10, 1]]), pred(1, [[0, 10, 1]])])  # IoU 1 and 0.5
    def run(*extra: str) -> int:
        return main(["eval", "--dataset", "charades_sta:test", "--pred", str(preds),
                     "--data-root", str(root), *extra])

    assert run("--json") == 0
    assert json.loads(capsys.readouterr().out)["brief"] == {
        "R1@0.3": 100.0,
        "R1@0.5": 100.0,
        "R1@0.7": 50.0,
        "mIoU": 75.0,
    }

    write_predictions(preds, [pred(0, [[0, 10, 1]])])
    assert run() == 2
    assert "1 of 2 GT query ids have no prediction (e.g. [1])" in capsys.readouterr().err


# -- reading rows: the fast checks accept exactly what the per-value checks accept --------------
_OK_WINDOWS = [[0, 2, 0.5], [4.0, 6.0, 1]]


@pytest.mark.parametrize(("windows", "saliency", "error"), [
    (_OK_WINDOWS, [0.5, 1, -2.0], None),
    ([(0, 2, 0.5)], [np.float64(0.5), 1], None),  # a tuple, a float subclass: per-value path, accepted
    ([[0, 2, 0.5], [5, "x", 1]], [0.5], "pred_relevant_windows[1] is [5, 'x', 1]"),
    ([[0, 2, 0.5], [0, True, 1]], [0.5], "pred_relevant_windows[1] is [0, True, 1]"),
    ([[0, 2, 0.5], [0, 1e999, 1]], [0.5], "pred_relevant_windows[1] is [0, inf, 1]"),
    ([["a", 2, 0.5]], [0.5], "pred_relevant_windows[0] is ['a', 2, 0.5]"),  # no str <= int compared
    ([[0, 2, 0.5], [3, 2, 1]], [0.5], "pred_relevant_windows[1] = [3, 2, 1] ends before it starts"),
    ([[0, 2]], [0.5], "pred_relevant_windows[0] is [0, 2]"),
    ([[0, 2], [0, 2, 1, 1]], [0.5], "pred_relevant_windows[0] is [0, 2]"),  # 6 numbers, not 2 x 3
    ([], [0.5], None),
    (_OK_WINDOWS, [0.5, True], "pred_saliency_scores"),
    (_OK_WINDOWS, [0.5, 1e999], "pred_saliency_scores"),
    (_OK_WINDOWS, [0.5, None], "pred_saliency_scores"),
    (_OK_WINDOWS, [], "pred_saliency_scores"),
])
def test_prediction_row_checks(windows: list, saliency: list, error: str | None) -> None:
    row = {"qid": 1, "pred_relevant_windows": windows, "pred_saliency_scores": saliency}
    if error is None:
        out = parse_prediction_row(row, "f:1")
        assert out["pred_relevant_windows"] == [[float(x) for x in w] for w in windows]
        assert all(type(x) is float for w in out["pred_relevant_windows"] for x in w)
        assert out["pred_saliency_scores"] == [float(x) for x in saliency]
        assert all(type(x) is float for x in out["pred_saliency_scores"])
    else:
        with pytest.raises(DataError, match=f"^f:1: .*{re.escape(error)}"):
            parse_prediction_row(row, "f:1")


@pytest.mark.parametrize(("ids", "scores", "error"), [
    ([3, 0, 74], [[4, 0, 2], [1, 1, 1], [0, 0, 0]], None),
    ([], [], None),
    ([3, True], [[1, 1, 1], [1, 1, 1]], "relevant_clip_ids[1] is True"),
    ([3, 75], [[1, 1, 1], [1, 1, 1]], "relevant_clip_ids[1] is 75"),  # 150 s: clips 0 to 74
    ([3, -1], [[1, 1, 1], [1, 1, 1]], "relevant_clip_ids[1] is -1"),
    ([3, 3], [[1, 1, 1], [1, 1, 1]], "relevant_clip_ids[1] = 3 appears twice"),
    ([3, 4], [[1, 1, 1], [1, 5, 1]], "saliency_scores[1] is [1, 5, 1]"),
    ([3, 4], [[1, 1, 1], [1, True, 1]], "saliency_scores[1] is [1, True, 1]"),
    ([3, 4], [[1, 1, 1], []], "saliency_scores[1] is []"),
    ([3, 4], [[1, 1, 1], [1.0, 1, 1]], "saliency_scores[1] is [1.0, 1, 1]"),
])
def test_ground_truth_saliency_checks(ids: list, scores: list, error: str | None) -> None:
    row = {"qid": 1, "vid": "v", "query": "q", "duration": 150, "relevant_windows": [[0, 2]],
           "relevant_clip_ids": ids, "saliency_scores": scores}
    if error is None:
        saliency = parse_qvhighlights_row(row, "f:1").saliency
        assert saliency == {i: tuple(s) for i, s in zip(ids, scores, strict=True)}
        assert list(saliency) == ids
    else:
        with pytest.raises(DataError, match=f"^f:1: {re.escape(error)}"):
            parse_qvhighlights_row(row, "f:1")
