"""An independent, per-query implementation of the method and of the official evaluator.

The harness computes everything in whole-array operations over all queries at once
(prefix sums, padded batches, vectorised greedy matching). This module computes the same
thing the plain way, one query and one curve at a time, with loops, straight from
METHOD.md and the official `standalone_eval` rules, and imports nothing from `harness/`
(it only reads the fields of the `Prepared` inputs and of the config it is given). The
fast-vs-reference tests (tests/test_fast_trial.py, tests/test_pinned.py) therefore compare
two implementations: a wrong Eq. 1 curve, threshold, merge, prune, span score, NMS,
matching rule or AP in either shows up as a difference.

Precision follows the inputs the way plain numpy does (a float32 similarity is
normalised in float32, a mean is taken in float64), so that equal rules give equal
windows; span scores are compared with a tolerance of a few 1e-7.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CLIP = 2.0  # seconds per frame: frame i is the clip [2i, 2i + 2)
IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
LENGTH_RANGES = {"short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0)}
HL_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))


# -- pairings --------------------------------------------------------------------------------
def parse_pairing(pairing: str | Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """`granalign`, `q-Ca`, `qs-Ca+qd-Cq` or a list of (query kind, caption kind) pairs."""
    if not isinstance(pairing, str):
        return [(str(x), str(c)) for x, c in pairing]
    text = "qs-Ca+qd-Cq" if pairing == "granalign" else pairing
    out = []
    for part in text.split("+"):
        x, c = part.split("-")
        out.append((x, c))
    return out


# -- Eq. 1, per query ------------------------------------------------------------------------
def normalise(row: np.ndarray, how: str) -> np.ndarray:
    """g: one variant's similarities over the frames of one video -> [0, 1]."""
    if how == "minmax":
        lo, hi = row.min(), row.max()
        if hi > lo:
            return (row - lo) / (hi - lo)
        return np.ones_like(row)  # a flat curve: every frame equally good
    if how == "shift":
        return (row + 1.0) / 2.0
    if how == "raw":
        return np.clip(row, 0.0, 1.0)
    raise ValueError(how)


def candidates(rank: np.ndarray, n: int, K: float) -> np.ndarray:
    """Frames among the top-K% (at least one) by the frame filter's rank."""
    n_cand = max(1, math.ceil(n * K / 100.0 - 1e-9))
    return rank < n_cand


def pair_rows(prep: Any, cfg: Any, i: int, x: str, c: str) -> list[np.ndarray]:
    """g(x_j, C_i) over query i's frames, one row per variant j (first m, or 1 for q)."""
    n = int(prep.n_frames[i])
    m = 1 if x == "q" else int(cfg.m)
    ca = prep.sims.get((x, "Ca"))
    rows = []
    for j in range(m):
        if c == "Ca":
            if j >= ca.shape[1] or np.isnan(ca[i, j, :n]).all():
                break
            rows.append(normalise(ca[i, j, :n], cfg.normalisation))
            continue
        cq = prep.sims[(x, "Cq")]
        if j >= cq.shape[1]:
            break
        cand = candidates(prep.aware_rank[i, :n], n, cfg.K)
        if cfg.cq_fallback == "ca":
            rows.append(normalise(np.where(cand, cq[i, j, :n], ca[i, j, :n]), cfg.normalisation))
        else:  # "zero": the candidates normalised among themselves, every other frame 0
            row = np.zeros(n, dtype=cq.dtype)
            row[cand] = normalise(cq[i, j, :n][cand], cfg.normalisation)
            rows.append(row)
    return rows


def mean_of(rows: Sequence[np.ndarray]) -> np.ndarray:
    """The frame-wise mean of equal-length rows: summed in their own precision, divided in float64."""
    total = rows[0]
    for r in rows[1:]:
        total = total + r
    return total.astype(np.float64) / len(rows)


def query_curves(prep: Any, cfg: Any, i: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(the curves the MPG runs on, the saliency curve) of query i."""
    per_pair = [pair_rows(prep, cfg, i, x, c) for x, c in parse_pairing(cfg.pairing)]
    if cfg.recipe == "vtg-gpt":
        # one curve per query variant of every pair, no average over pairs
        curves = [row for rows in per_pair for row in rows]
        return curves, mean_of(curves)
    m_eff = max(len(rows) for rows in per_pair)
    variants = [mean_of([rows[j] if len(rows) > 1 else rows[0] for rows in per_pair]) for j in range(m_eff)]
    mean = mean_of(variants)  # S of Eq. 1
    if cfg.proposals_from == "variants+mean" and m_eff > 1:
        return [*variants, mean], mean
    return [mean], mean


# -- the MPG, per curve ------------------------------------------------------------------------
def threshold(curve: np.ndarray, bins: int, top_k: int, lo: float = 0.0, hi: float = 1.0) -> float:
    """The lower edge of the highest bin whose bins at or above hold >= top_k frames, else lo."""
    counts, edges = np.histogram(curve.astype(np.float64), bins=bins, range=(lo, hi))
    for b in range(bins - 1, -1, -1):
        if counts[b:].sum() >= top_k:
            return float(edges[b])
    return lo


def merge(selected: Sequence[int], gap: int) -> list[tuple[int, int]]:
    """Runs of selected frames whose index gaps are at most `gap`, as [first, last]."""
    spans: list[list[int]] = []
    for f in selected:
        if spans and f - spans[-1][1] <= gap:
            spans[-1][1] = f
        else:
            spans.append([f, f])
    return [(a, b) for a, b in spans]


def span_mean(curve: np.ndarray, first: int, last: int) -> float:
    return float(np.mean(curve[first : last + 1].astype(np.float64)))


def best_index(values: Sequence[float]) -> int:
    """The first maximum."""
    best = 0
    for k, v in enumerate(values):
        if v > values[best]:
            best = k
    return best


def prune(curve: np.ndarray, spans: list[tuple[int, int]], selected: list[int], gap: int, n: float,
          rule: str) -> list[tuple[int, int]]:
    if rule == "none" or not spans:
        return spans
    means = [span_mean(curve, a, b) for a, b in spans]
    best = best_index(means)
    if rule == "frames":
        cut = float(np.percentile(curve.astype(np.float64), n)) if n > 0 else -math.inf
        return [s for k, s in enumerate(spans) if means[k] >= cut or k == best]
    if rule == "spans":
        drop = math.floor(len(spans) * n / 100.0) if n > 0 else 0
        by_mean = sorted(range(len(spans)), key=lambda k: means[k])  # stable: earlier first
        dropped = set(by_mean[:drop]) - {best}
        return [s for k, s in enumerate(spans) if k not in dropped]
    if rule == "merge":
        cut = float(np.percentile(curve.astype(np.float64), n)) if n > 0 else -math.inf
        out: list[list[int]] = []
        for a, b in merge(selected, 0):
            if out and a - out[-1][1] <= gap and span_mean(curve, out[-1][0], b) >= cut:
                out[-1][1] = b
            else:
                out.append([a, b])
        return [(a, b) for a, b in out]
    raise ValueError(rule)


def span_scores(curve: np.ndarray, spans: list[tuple[int, int]], selected: set[int], lam: float,
                how: str) -> list[float]:
    """Eq. 2 on the surviving spans: (1 - lam) * mean + lam * length share."""
    if how == "granalign":
        total = sum(b - a + 1 for a, b in spans)
        return [(1 - lam) * span_mean(curve, a, b) + lam * (b - a + 1) / total for a, b in spans]
    # VTG-GPT: mean and length over the selected frames inside each span only
    inside = [[f for f in range(a, b + 1) if f in selected] for a, b in spans]
    total = sum(len(fs) for fs in inside)
    return [(1 - lam) * float(np.mean(curve[fs].astype(np.float64))) + lam * len(fs) / total for fs in inside]


def proposals(curve: np.ndarray, cfg: Any) -> list[tuple[int, int, float]]:
    """(first, last, score) of one curve's spans, in time order."""
    vtg = cfg.recipe == "vtg-gpt"
    thr = threshold(curve, cfg.bins, cfg.top_k)
    selected = [f for f in range(len(curve)) if float(curve[f]) > thr]
    spans = merge(selected, cfg.gap)
    spans = prune(curve, spans, selected, cfg.gap, 0.0 if vtg else float(cfg.n), "none" if vtg else cfg.prune)
    scores = span_scores(curve, spans, set(selected), cfg.lam, "selected" if vtg else cfg.span_score)
    return [(a, b, s) for (a, b), s in zip(spans, scores, strict=True)]


# -- NMS and prediction rows -------------------------------------------------------------------
def interval_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = np.clip(
        np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def temporal_nms(intervals: np.ndarray, scores: np.ndarray, tau: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS: by decreasing score (ties: the earlier), drop IoU >= tau with a kept one."""
    order = np.argsort(-scores, kind="stable")
    if order.size == 0:
        return order
    iou = interval_iou(intervals[order], intervals[order])
    alive = np.ones(order.size, dtype=bool)
    keep = []
    for i in range(order.size):
        if not alive[i]:
            continue
        keep.append(order[i])
        if max_keep is not None and len(keep) >= max_keep:
            break
        alive[i + 1 :] &= iou[i, i + 1 :] < tau
    return np.asarray(keep, dtype=np.int64)


def reference_rows(prep: Any, cfg: Any) -> list[dict[str, Any]]:
    """The official prediction rows, computed query by query from the raw similarities."""
    rows = []
    for i, q in enumerate(prep.queries):
        curves, saliency = query_curves(prep, cfg, i)
        pooled = [p for curve in curves for p in proposals(curve, cfg)]  # curve order, then time
        first = np.array([p[0] for p in pooled], dtype=np.float64)
        last = np.array([p[1] for p in pooled], dtype=np.float64)
        score = np.array([p[2] for p in pooled], dtype=np.float64)
        ends = last if cfg.recipe == "vtg-gpt" else last + 1.0  # VTG-GPT: IoU on closed indices
        keep = temporal_nms(np.stack([first, ends], axis=1), score, cfg.tau, cfg.max_windows)
        windows = []
        for k in keep:
            s = min(max(first[k] * CLIP, 0.0), q.duration)
            e = min(max((last[k] + 1.0) * CLIP, 0.0), q.duration)
            windows.append([round(s, 4), round(e, 4), round(float(score[k]), 6)])
        rows.append({
            "qid": q.qid, "query": q.query, "vid": q.vid,
            "pred_relevant_windows": windows,
            "pred_saliency_scores": [round(float(v), 6) for v in np.nan_to_num(saliency)],
        })
    return rows


# -- the official QVHighlights evaluator, per query ---------------------------------------------
def iou_pair(a: Sequence[float], b: Sequence[float]) -> float:
    """The mAP's IoU: intersection over len + len - intersection."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def iou_hull(a: Sequence[float], b: Sequence[float]) -> float:
    """R1's IoU: intersection over the hull of the two windows."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def greedy_hits(gt: Sequence[Sequence[float]], ranked: Sequence[Sequence[float]], t: float) -> list[bool]:
    """Each prediction in rank order takes the unmatched GT window of highest IoU >= t; among
    equal IoUs the LATER GT window (the official loop walks a stable ascending argsort reversed)."""
    taken: set[int] = set()
    hits = []
    for w in ranked:
        ious = [iou_pair(w, g) for g in gt]
        order = sorted(range(len(gt)), key=lambda j: (ious[j], j), reverse=True)
        hit = False
        for j in order:
            if ious[j] < t:
                break
            if j in taken:
                continue
            taken.add(j)
            hit = True
            break
        hits.append(hit)
    return hits


def voc_ap(hits: Sequence[bool], n_gt: int) -> float:
    """All-point interpolated AP (the official `interpolated_precision_recall`)."""
    tp = fp = 0
    precision, recall = [], []
    for h in hits:
        tp += h
        fp += not h
        precision.append(tp / (tp + fp))
        recall.append(tp / n_gt)
    mprec = [0.0, *precision, 0.0]
    mrec = [0.0, *recall, 1.0]
    for k in range(len(mprec) - 2, -1, -1):
        mprec[k] = max(mprec[k], mprec[k + 1])
    return sum((mrec[k] - mrec[k - 1]) * mprec[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1])


def query_ap(gt: Sequence[Sequence[float]], windows: Sequence[Sequence[float]], t: float) -> float:
    ranked = sorted(windows[:10], key=lambda w: -w[2])  # Python's sort is stable: ties keep file order
    return voc_ap(greedy_hits(gt, ranked, t), len(gt))


def top1_iou(gt: Sequence[Sequence[float]], windows: Sequence[Sequence[float]]) -> float:
    """The first window against the GT window it overlaps most (the first on ties); 0 if none."""
    if not windows:
        return 0.0
    w = windows[0]
    cross = [iou_pair(w, g) for g in gt]
    return iou_hull(w, gt[best_index(cross)])


def pct(v: float) -> float:
    return float(f"{100 * v:.2f}")


def mr_metrics(gts: Sequence[Sequence[Sequence[float]]], preds: Sequence[Sequence[Sequence[float]]]) -> dict[str, Any]:
    """R1 per threshold, mAP per threshold and average, and the first-window IoUs. The
    means are taken as the official code takes them (`ap_array.mean(0)`, then `np.mean`
    of those): a sum in another order can move a number at the second decimal."""
    ious = [top1_iou(g, p) for g, p in zip(gts, preds, strict=True)]
    with_pred = [(g, p) for g, p in zip(gts, preds, strict=True) if p]
    if with_pred:
        ap_array = np.array([[query_ap(g, p, t) for t in IOU_THRESHOLDS] for g, p in with_pred])
        ap_thds = ap_array.mean(0)
    else:
        ap_thds = np.full(len(IOU_THRESHOLDS), math.nan)
    m_ap = {str(t): pct(float(v)) for t, v in zip(IOU_THRESHOLDS, ap_thds, strict=True)}
    m_ap["average"] = pct(float(np.mean(ap_thds)))
    r1 = {str(t): (pct(sum(i >= t for i in ious) / len(ious)) if ious else math.nan) for t in IOU_THRESHOLDS}
    return {"MR-mAP": m_ap, "MR-R1": r1, "iou": ious}


def hl_ap(y_true: Sequence[float], y_score: Sequence[float]) -> float:
    """The official highlight AP (`get_ap` on sklearn's precision-recall curve), by loops:
    each distinct score is a threshold; the AP is the mean, over the recall levels reached,
    of the best precision at that recall or higher. All-negative labels 0, all-positive 1."""
    if len(set(y_true)) == 1:
        return float(y_true[0] != 0)
    positives = sum(y_true)
    precision, recall = [], []
    for thr in sorted(set(y_score), reverse=True):
        chosen = [k for k in range(len(y_score)) if y_score[k] >= thr]
        tp = sum(y_true[k] for k in chosen)
        precision.append(tp / len(chosen))
        recall.append(tp / positives)
    levels: dict[float, float] = {}
    for k, r in enumerate(recall):
        if r > 0 and r not in levels:
            levels[r] = max(precision[k:])
    return sum(levels.values()) / len(levels)


def hl_metrics(queries: Sequence[Any], saliency: Sequence[Sequence[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, level in HL_LEVELS:
        aps, hits = [], []  # per query: AP per annotator (Q, 3), hit (Q,)
        for q, pred in zip(queries, saliency, strict=True):
            n = int(q.duration / CLIP)  # the official grid: floor
            labels = [[0.0] * 3 for _ in range(n)]
            for clip, scores in (q.saliency or {}).items():
                if 0 <= clip < n:
                    for a, s in enumerate(list(scores)[:3]):
                        labels[clip][a] = float(s)
            on_grid = [float(pred[k]) if k < len(pred) else 0.0 for k in range(n)]
            aps.append([hl_ap([float(labels[k][a] >= level) for k in range(n)], on_grid) for a in range(3)])
            top = best_index(list(pred))
            hits.append(float(top < n and any(labels[top][a] >= level for a in range(3))))
        out[f"HL-min-{name}"] = {"HL-mAP": pct(float(np.mean(np.array(aps)))), "HL-Hit1": pct(float(np.mean(hits)))}
    return out


def reference_metrics(queries: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The brief metrics of the official evaluator (plus R1@0.3 and mIoU), from rows in
    query order, computed query by query."""
    by_qid = {r["qid"]: r for r in rows}
    preds = [[list(w) for w in by_qid[q.qid]["pred_relevant_windows"]][:10] for q in queries]
    gts = [[list(w) for w in q.windows] for q in queries]
    full = mr_metrics(gts, preds)
    brief: dict[str, Any] = {
        "MR-full-R1@0.3": pct(sum(i >= 0.3 for i in full["iou"]) / len(full["iou"])),
        "MR-full-R1@0.5": full["MR-R1"]["0.5"],
        "MR-full-R1@0.7": full["MR-R1"]["0.7"],
        "MR-full-mAP": full["MR-mAP"]["average"],
        "MR-full-mAP@0.5": full["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": full["MR-mAP"]["0.75"],
        "MR-full-mIoU": pct(float(np.mean(full["iou"]))),
    }
    for name in ("long", "middle", "short"):
        lo, hi = LENGTH_RANGES[name]
        kept = [([w for w in g if lo < w[1] - w[0] <= hi], p) for g, p in zip(gts, preds, strict=True)]
        kept = [(g, p) for g, p in kept if g]
        split = mr_metrics([g for g, _ in kept], [p for _, p in kept])
        brief[f"MR-{name}-mAP"] = split["MR-mAP"]["average"]
    if all(q.saliency is not None for q in queries):
        hl = hl_metrics(queries, [by_qid[q.qid]["pred_saliency_scores"] for q in queries])
        for level, values in hl.items():
            brief[f"{level}-mAP"] = values["HL-mAP"]
            brief[f"{level}-Hit1"] = values["HL-Hit1"]
    return brief


def tie_groups(windows: Sequence[Sequence[float]], atol: float) -> list[tuple[float, list[list[float]]]]:
    """Consecutive windows whose scores are within `atol` of the group's first, as
    (score, sorted [start, end] list): equal spans of equal scores may come in either order."""
    groups: list[tuple[float, list[list[float]]]] = []
    for w in windows:
        if groups and abs(w[2] - groups[-1][0]) <= atol:
            groups[-1][1].append([float(w[0]), float(w[1])])
        else:
            groups.append((float(w[2]), [[float(w[0]), float(w[1])]]))
    return [(score, sorted(ws)) for score, ws in groups]


def rows_close(got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]], atol: float = 2e-6) -> list[str]:
    """Where two lists of prediction rows differ: the same windows with scores within `atol`
    (the last rounded decimal) in the same order, where windows whose scores tie within
    `atol` may come in either order (which of two equal scores sorts first is float noise
    of the sums, not a rule), and so may the members of a tie that the last kept window
    cuts through (the same number of them, at the same score); saliency within `atol`;
    ids exactly."""
    problems = []
    if len(got) != len(want):
        return [f"{len(got)} rows vs {len(want)}"]
    for a, b in zip(got, want, strict=True):
        where = f"qid {a['qid']}"
        if (a["qid"], a["query"], a["vid"]) != (b["qid"], b["query"], b["vid"]):
            problems.append(f"{where}: ids differ")
        ga, gb = tie_groups(a["pred_relevant_windows"], atol), tie_groups(b["pred_relevant_windows"], atol)
        if ga and gb and len(ga[-1][1]) == len(gb[-1][1]) and abs(ga[-1][0] - gb[-1][0]) <= atol:
            ga, gb = ga[:-1], gb[:-1]  # the last tie group: the same size and score suffice
        if [w for _, w in ga] != [w for _, w in gb] or any(abs(x - y) > atol for (x, _), (y, _) in zip(ga, gb, strict=False)):
            problems.append(f"{where}: windows {a['pred_relevant_windows']} vs {b['pred_relevant_windows']}")
        sa, sb = a["pred_saliency_scores"], b["pred_saliency_scores"]
        if len(sa) != len(sb) or any(abs(x - y) > atol for x, y in zip(sa, sb, strict=True)):
            problems.append(f"{where}: saliency differs")
    return problems
