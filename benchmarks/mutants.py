"""Mutation check of the core math: does a one-line wrong number fail a test?

Each mutant below changes one line of the method, the evaluator, the bootstrap or the
cache fingerprint into something plausible and wrong (a `>=` made `>`, an off-by-one, a
tie broken the other way, a normalisation or an average taken over the wrong thing). The
script copies the working tree (tracked and untracked, not ignored files) to a temporary
folder once, applies each mutant there in turn (the checkout is never touched), runs the
fast tests that cover that code with `-x`, and prints which test killed it, or SURVIVED.
The unmutated copy is run first: its tests must pass.

    python benchmarks/mutants.py              # every mutant (about 8 minutes on 2 cores)
    python benchmarks/mutants.py M14 M28      # some
    python benchmarks/mutants.py --list       # what each one changes
    python benchmarks/mutants.py M09 --tests tests/test_fast_trial.py   # other tests, same mutant

Exit status 1 when a mutant survives or no longer applies (the line it changes is gone:
update the list with the code). Needs GRANALIGN_DATA (the evaluator's conformance test
reads the official reference files). Not part of `make test`: it runs the tests ~60 times.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the fast tests per area (no model, no demo cache, no servers): what each mutant runs
METHOD = ("tests/test_scoring.py", "tests/test_proposals.py",
          "tests/test_fast_trial.py::test_fast_trial_equals_the_reference_on_random_inputs",
          "tests/test_fast_trial.py::test_batched_nms_equals_the_per_query_loop")
EVAL = ("tests/test_eval.py", "tests/test_fast_trial.py::test_fast_trial_equals_the_reference_on_random_inputs")
BOOTSTRAP = ("tests/test_bootstrap.py",)
FINGERPRINT = ("tests/test_cache.py",)
PROMISES = ("tests/test_promises.py",)  # on the demo: its cache is built once for all mutants


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # file in the repository
    old: str  # text that occurs exactly once in the file; only one of its lines differs in `new`
    new: str
    what: str
    tests: tuple[str, ...]


MUTANTS = [
    # -- Eq. 1: normalisations, candidates, fallback, means ---------------------------------
    Mutant("M01", "harness/method/scoring.py", "np.where(span > 0, span, 1.0), 1.0)",
           "np.where(span > 0, span, 1.0), 0.0)", "min-max: a flat curve scores 0, not 1", METHOD),
    Mutant("M02", "harness/method/scoring.py", "lo = np.nanmin(sims, axis=-1, keepdims=True)",
           "lo = np.nanmin(sims, axis=None, keepdims=True)", "min-max: the minimum over all queries, not per video",
           METHOD),
    Mutant("M03", "harness/method/scoring.py", "return (sims + 1.0) / 2.0", "return sims",
           "shift normalisation: (cos + 1) / 2 dropped", METHOD),
    Mutant("M04", "harness/method/scoring.py", "return np.clip(sims, 0.0, 1.0)", "return np.clip(sims, -1.0, 1.0)",
           "raw normalisation: negative cosines not clipped", METHOD),
    Mutant("M05", "harness/method/scoring.py", "return aware_rank < n_cand[:, None]",
           "return aware_rank <= n_cand[:, None]", "candidates: one frame more than the top K%", METHOD),
    Mutant("M06", "harness/method/scoring.py", "return normalise(np.where(cand, sims_cq, sims_ca))",
           "return np.where(cand, normalise(sims_cq), normalise(sims_ca))",
           "Cq fallback: aware and agnostic similarities normalised apart", METHOD),
    Mutant("M07", "harness/method/scoring.py", "return _nanmean_allnan(stacked, axis=0)",
           "return _nanmean_allnan(stacked[:1], axis=0)", "Eq. 1: only the pairing's first pair", METHOD),
    Mutant("M08", "harness/method/scoring.py", "return _nanmean_allnan(variants, axis=1)",
           "return variants[:, 0]", "Eq. 1: the mean curve is the first variant's", METHOD),
    Mutant("M09", "harness/method/recipes.py", 'if cfg.proposals_from == "variants+mean" and m_eff > 1:',
           'if cfg.proposals_from == "variants+mean" and m_eff > 99:',
           "proposals from the mean curve only (variant curves dropped)", METHOD),
    # -- the MPG: threshold, merge, prune ----------------------------------------------------
    Mutant("M10", "harness/method/proposals.py",
           "return np.where(highest >= 0, edges[np.maximum(highest, 0)], lo)",
           "return np.where(highest >= 0, edges[np.maximum(highest - 1, 0)], lo)",
           "threshold: one bin too low", METHOD),
    Mutant("M11", "harness/method/proposals.py", "ok = at_or_above >= top_k", "ok = at_or_above > top_k",
           "threshold: more than top_k frames needed", METHOD),
    Mutant("M12", "harness/method/proposals.py",
           "return np.isfinite(self.values) & (self.values > thr[:, None])",
           "return np.isfinite(self.values) & (self.values >= thr[:, None])",
           "selection: frames at the threshold selected", METHOD),
    Mutant("M13", "harness/method/proposals.py", "(cols[1:] - cols[:-1] > gap)", "(cols[1:] - cols[:-1] >= gap)",
           "merge: a gap equal to `gap` splits", METHOD),
    Mutant("M14", "harness/method/proposals.py", "keep = means >= curve_percentiles(curves, n)[curve]",
           "keep = means > curve_percentiles(curves, n)[curve]",
           "prune: a span mean equal to the percentile dropped", METHOD),
    Mutant("M15", "harness/method/proposals.py",
           "keep = means >= curve_percentiles(curves, n)[curve]\n"
           "    return keep | best_per_group(means, curve, batch_of(curves).n)",
           "keep = means >= curve_percentiles(curves, n)[curve]\n    return keep",
           "prune: the best span no longer always kept", METHOD),
    Mutant("M16", "harness/method/proposals.py", "h = (np.maximum(count, 1) - 1) * (n / 100.0)",
           "h = np.maximum(count, 1) * (n / 100.0)", "percentile: rank n% of count, not of count - 1", METHOD),
    Mutant("M17", "harness/method/proposals.py", "n_drop = np.floor(counts * n / 100.0)",
           "n_drop = np.ceil(counts * n / 100.0)", "spans pruning: ceil of n% of the spans", METHOD),
    Mutant("M18", "harness/method/proposals.py", "if merged_mean >= cuts[c]:", "if merged_mean > cuts[c]:",
           "merge pruning: a merged mean equal to the percentile refused", METHOD),
    # -- Eq. 2 ---------------------------------------------------------------------------------
    Mutant("M19", "harness/method/proposals.py", "return (1.0 - lam) * means + lam * length / total",
           "return (1.0 - lam) * means + lam * length", "Eq. 2: length not divided by the total", METHOD),
    Mutant("M20", "harness/method/proposals.py", "return (1.0 - lam) * means + lam * length / total",
           "return lam * means + (1.0 - lam) * length / total", "Eq. 2: lam on the mean instead", METHOD),
    Mutant("M21", "harness/method/proposals.py", "return (1.0 - lam) * means + lam * count / total",
           "return (1.0 - lam) * means + lam * (last - first + 1) / total",
           "VTG-GPT span score: span length instead of selected count", METHOD),
    Mutant("M22", "harness/method/proposals.py",
           "return (prefix[curve, last + 1] - prefix[curve, first]) / (last - first + 1)",
           "return (prefix[curve, last + 1] - prefix[curve, first]) / (last - first + 2)",
           "span mean: off by one frame", METHOD),
    # -- NMS and windows -----------------------------------------------------------------------
    Mutant("M23", "harness/method/proposals.py", "alive[rows, i + 1:] &= iou < tau",
           "alive[rows, i + 1:] &= iou <= tau", "NMS: IoU equal to tau kept", METHOD),
    Mutant("M24", "harness/method/proposals.py", "order = np.lexsort((-score, owner))",
           "order = np.lexsort((score, owner))", "NMS: lowest score first", METHOD),
    Mutant("M25", "harness/method/recipes.py", "ends = spans.last if recipe.nms_closed_index else spans.last + 1",
           "ends = spans.last + 1", "VTG-GPT: NMS on half-open spans, not closed indices", METHOD),
    Mutant("M26", "harness/method/recipes.py",
           "windows = np.stack([first * CLIP_SECONDS, (last + 1.0) * CLIP_SECONDS], axis=-1)",
           "windows = np.stack([first * CLIP_SECONDS, last * CLIP_SECONDS], axis=-1)",
           "windows: end at the last frame's start", METHOD),
    Mutant("M27", "harness/method/recipes.py", "windows = np.clip(windows, 0.0, durations[:, None, None])",
           "windows = np.clip(windows, 0.0, None)", "windows: not clipped to the duration", METHOD),
    # -- the evaluator: matching, AP, R1, splits, highlights -----------------------------------
    Mutant("M28", "harness/eval/qvhighlights.py", "pick = g - 1 - np.argmax(ranked, axis=-1)",
           "pick = np.argmax(ranked[..., ::-1], axis=-1)", "matching: among equal IoUs the FIRST GT wins", EVAL),
    Mutant("M29", "harness/eval/qvhighlights.py", "cand = (cur >= thresholds[None, :, None]) & ~locked",
           "cand = (cur > thresholds[None, :, None]) & ~locked", "matching: IoU equal to t misses", EVAL),
    Mutant("M30", "harness/eval/qvhighlights.py", "locked[rows, cols, pick] |= hit",
           "locked[rows, cols, pick] |= hit & False", "matching: a GT window can be matched twice", EVAL),
    Mutant("M31", "harness/eval/qvhighlights.py", "tp[single] = hit & (np.cumsum(hit, axis=-1) == 1)",
           "tp[single] = hit", "one GT window: every duplicate hit counts", EVAL),
    Mutant("M32", "harness/eval/qvhighlights.py",
           "precision = np.divide(tp_cum, seen, out=np.zeros_like(tp_cum), where=seen > 0)\n"
           "    best_later = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]",
           "precision = np.divide(tp_cum, seen, out=np.zeros_like(tp_cum), where=seen > 0)\n"
           "    best_later = precision", "AP: precision not interpolated", EVAL),
    Mutant("M33", "harness/eval/qvhighlights.py", "return np.where(found, 1.0 / (rank + 1.0), 0.0)",
           "return np.where(found, 1.0 / (rank + 2.0), 0.0)", "one-GT AP: off by one rank", EVAL),
    Mutant("M34", "harness/eval/qvhighlights.py",
           "order = np.lexsort((-pred.score, ~pred.valid), axis=-1)\n    if (order",
           "order = np.lexsort((pred.score, ~pred.valid), axis=-1)\n    if (order",
           "mAP: windows ranked by increasing score", EVAL),
    Mutant("M35", "harness/eval/qvhighlights.py", "MAX_PRED_WINDOWS = 10", "MAX_PRED_WINDOWS = 11",
           "mAP: 11 windows looked at", EVAL),
    Mutant("M36", "harness/eval/windows.py", "out[str(t)] = pct(float(np.mean(iou >= t))) if iou.size else math.nan",
           "out[str(t)] = pct(float(np.mean(iou > t))) if iou.size else math.nan", "R1: IoU equal to t misses", EVAL),
    Mutant("M37", "harness/eval/qvhighlights.py",
           "chosen = np.take_along_axis(gt.se, np.argmax(first, axis=1)[:, None, None], axis=1)[:, 0]",
           "chosen = np.take_along_axis(gt.se, np.zeros_like(np.argmax(first, axis=1))[:, None, None], axis=1)[:, 0]",
           "R1: against the first GT window, not the best-overlapping one", EVAL),
    Mutant("M38", "harness/eval/windows.py", "union = (pe - ps) + (ge - gs) - inter", "union = (pe - ps) + (ge - gs)",
           "mAP IoU: the intersection counted twice in the union", EVAL),
    Mutant("M39", "harness/eval/qvhighlights.py", "keep = gt.valid & (length > lo) & (length <= hi)",
           "keep = gt.valid & (length >= lo) & (length < hi)", "length splits: [lo, hi) instead of (lo, hi]", EVAL),
    Mutant("M40", "harness/eval/qvhighlights.py",
           "mean_ap = ap[has_pred].mean(axis=0) if has_pred.any()",
           "mean_ap = ap.mean(axis=0) if has_pred.any()", "mAP: queries without a window counted as 0", EVAL),
    Mutant("M41", "harness/eval/qvhighlights.py", 'm_ap["average"] = pct(float(np.mean(mean_ap)))',
           'm_ap["average"] = pct(float(np.median(mean_ap)))', "mAP@avg: median over thresholds", EVAL),
    Mutant("M42", "harness/eval/qvhighlights.py",
           "n = np.array([int(q.duration / CLIP_SECONDS) for q in gt], dtype=int)",
           "n = np.array([int(q.duration / CLIP_SECONDS + 0.5) for q in gt], dtype=int)",
           "highlights: clip grid rounded, not floored", EVAL),
    Mutant("M43", "harness/eval/qvhighlights.py",
           "positive = np.concatenate([(labels >= m).astype(float) for _, m in HL_LEVELS], axis=2)",
           "positive = np.concatenate([(labels > m).astype(float) for _, m in HL_LEVELS], axis=2)",
           "highlights: a label equal to the level is negative", EVAL),
    Mutant("M44", "harness/eval/qvhighlights.py", "differs = s[:, 1:] != s[:, :-1]",
           "differs = np.ones_like(s[:, 1:], dtype=bool)", "highlight AP: tied scores split into thresholds", EVAL),
    Mutant("M45", "harness/eval/qvhighlights.py",
           "return positive[np.arange(len(top)), top_c].max(axis=-1) * inside",
           "return positive[np.arange(len(top)), top_c].min(axis=-1) * inside",
           "Hit1: every annotator must agree, not any", EVAL),
    # -- bootstrap ------------------------------------------------------------------------------
    Mutant("M46", "harness/eval/bootstrap.py",
           "p = min(1.0, 2.0 * min(float(np.mean(d[ok] <= 0)), float(np.mean(d[ok] >= 0)))) if ok.any() else 1.0",
           "p = min(1.0, min(float(np.mean(d[ok] <= 0)), float(np.mean(d[ok] >= 0)))) if ok.any() else 1.0",
           "p-value: one-sided", BOOTSTRAP),
    Mutant("M47", "harness/eval/bootstrap.py", "sa, sb = _means(va, ma, idx), _means(vb, mb, idx)",
           "sa, sb = _means(va, ma, idx), _means(vb, mb, idx[::-1])", "paired test: B on other resamples", BOOTSTRAP),
    Mutant("M48", "harness/eval/bootstrap.py", "tail = 100.0 * (1.0 - level) / 2.0", "tail = 100.0 * (1.0 - level)",
           "interval: a 90 % interval called 95 %", BOOTSTRAP),
    Mutant("M49", "harness/eval/bootstrap.py", "num, den = v[block].sum(axis=1), m[block].sum(axis=1)",
           "num, den = v[block].sum(axis=1), np.full(len(block), float(block.shape[1]))",
           "resampled mean: over every query, not the masked ones", BOOTSTRAP),
    # -- the cache fingerprint --------------------------------------------------------------------
    Mutant("M50", "harness/method/sources.py",
           "return Prepared(name, tuple(queries), n_frames, sims, aware_rank, cache.fingerprint(), spec,",
           'return Prepared(name, tuple(queries), n_frames, sims, aware_rank, "0" * 64, spec,',
           "a run's fingerprint made a constant", FINGERPRINT),
    Mutant("M51", "harness/method/sources.py",
           "cache.reset_reads()  # the fingerprint covers exactly what this preparation read",
           "pass", "fingerprint: reads of an earlier preparation included", FINGERPRINT),
    Mutant("M52", "harness/cache/store.py", "pairs = sorted(self._read.items())", "pairs = sorted(self._read)",
           "fingerprint: keys only, not the content read", FINGERPRINT),
    # -- promises of the README and the command line ------------------------------------------------
    Mutant("M53", "harness/cache/embedders.py", 'suffix = ("" if dtype == "float32" else f"#{dtype}")',
           'suffix = ("")', "the embedding dtype left out of the cache key", PROMISES),
    Mutant("M54", "harness/runner/sweeps.py", 'cfg = best_config(spec, best["params"], overrides)',
           "cfg = spec.base_config(overrides)", "--best-config: the trial's params not written", PROMISES),
    Mutant("M55", "harness/core/processes.py", "return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)",
           "return 1", "an interrupt exits with status 1", PROMISES),
    Mutant("M56", "harness/runner/sweeps.py", "self.subs = parse_substitutions(settings.substitutions)",
           "self.subs = ()", "sweep --substitute ignored by the workers", PROMISES),
    Mutant("M57", "harness/cli/run.py",
           "res = run_config(cfg, args.out, cache, args.data_root, parse_substitutions(args.substitute or []))",
           "res = run_config(cfg, args.out, cache, args.data_root, ())", "run --substitute ignored", PROMISES),
    Mutant("M58", "harness/runner/sweeps.py", "if t.should_prune():", "if False:",
           "the median pruner never prunes", PROMISES),
]


def tree_files() -> list[str]:
    """The working tree as a fresh clone plus uncommitted work would have it."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def apply(root: Path, m: Mutant) -> str:
    """Mutate the copy; returns the original text. Refuses a mutant that no longer applies."""
    path = root / m.path
    text = path.read_text()
    if text.count(m.old) != 1:
        raise LookupError(f"{m.id}: the text it changes occurs {text.count(m.old)} times in {m.path}")
    path.write_text(text.replace(m.old, m.new))
    return text


def run_tests(root: Path, tests: tuple[str, ...], demo_cache: Path) -> tuple[int, str]:
    env = {"GRANALIGN_TEST_DEMO_CACHE": str(demo_cache), **os.environ, "PYTHONPATH": str(root),
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "--tb=no", "-rf", "-p", "no:cacheprovider", *tests],
        cwd=root, env=env, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    return proc.returncode, failed[0] if failed else proc.stdout.strip().splitlines()[-1:][0] if proc.stdout else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--tests", nargs="+", default=None, metavar="TARGET",
                    help="run these pytest targets against every chosen mutant instead of its own")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.ids or m.id in args.ids]
    if args.list:
        for m in chosen:
            print(f"{m.id}  {m.path:<30}  {m.what}\n      - {m.old.splitlines()[-1].strip()}\n"
                  f"      + {m.new.splitlines()[-1].strip()}")
        return 0
    if args.tests:
        chosen = [dataclasses.replace(m, tests=tuple(args.tests)) for m in chosen]
    with tempfile.TemporaryDirectory(prefix="granalign-mutants-") as tmp:
        root = Path(tmp) / "tree"
        demo_cache = Path(tmp) / "demo-cache"  # the demo tests' cache, built by the baseline run
        for f in tree_files():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, root / f)
        suites = sorted({t for m in chosen for t in m.tests})
        t0 = time.perf_counter()
        rc, first = run_tests(root, tuple(suites), demo_cache)
        print(f"baseline (unmutated) {len(suites)} test targets: {'pass' if rc == 0 else 'FAIL ' + first} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if rc != 0:
            return 2
        survivors = broken = 0
        print(f"{'id':<4}  {'what':<62}  result")
        for m in chosen:
            t = time.perf_counter()
            try:
                original = apply(root, m)
            except LookupError as e:
                broken += 1
                print(f"{m.id:<4}  {m.what:<62}  NO LONGER APPLIES ({e})", flush=True)
                continue
            try:
                rc, first = run_tests(root, m.tests, demo_cache)
            finally:
                (root / m.path).write_text(original)
            if rc == 0:
                survivors += 1
                result = "SURVIVED"
            elif rc == 1:
                result = f"killed by {first}"
            else:
                result = f"killed (pytest exit {rc}: {first})"
            print(f"{m.id:<4}  {m.what:<62}  {result}  [{time.perf_counter() - t:.0f} s]", flush=True)
    print(f"{len(chosen)} mutants: {len(chosen) - survivors - broken} killed, {survivors} survived, "
          f"{broken} no longer apply ({time.perf_counter() - t0:.0f} s)")
    return 1 if survivors or broken else 0


if __name__ == "__main__":
    sys.exit(main())
