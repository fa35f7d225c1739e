"""Benchmark: the README's commands as whole processes (what a user waits for), on a cold and
a warm cache, what each step costs, and `granalign eval` against the official evaluator.

    GRANALIGN_DATA=../shared/data .venv/bin/python benchmarks/bench_commands.py \\
        --official ../moment_detr [--qvh-cache .granalign/cache] [--repeats 3]

Every figure is the wall time of a new process (best of `--repeats`, and CPU seconds where
said), measured in this one run with the load average printed: compare ratios, not figures
from different runs. Sections (`--sections`, default all):

- `startup`: the interpreter alone, then the start-up of each command (a process that
  imports the module `granalign` imports for it, and nothing else), `granalign --help`.
- `eval`: `granalign eval` on QVHighlights val (the official sample predictions) and the
  official evaluator on the same file, alternated; the ratio of the best times, whether
  their brief metrics agree, and the steps of `granalign eval` (imports, reading the ground
  truth, reading the predictions, the evaluation, the report). `--official` is a checkout of
  jayleicn/moment_detr (`git clone https://github.com/jayleicn/moment_detr`), run as its
  `standalone_eval/eval_sample.sh` runs it (it needs scikit-learn); without it the official
  side is skipped.
- `commands`: `granalign ls`, `granalign table 3 --demo` (= `make demo`) from an empty demo
  cache and empty Optuna / MLflow stores, then again (warm), and `granalign run
  experiments/granalign_qvh_minigptv2.yaml` on `--qvh-cache` (a cache `make cache-qvh`
  filled: an empty one has nothing to run on; `bench_make.py` times filling it), twice.
  They run in a temporary working folder (`--work`), so no store of the checkout is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRED = Path("qvhighlights") / "eval_reference" / "sample_val_preds.jsonl"
GT = Path("qvhighlights") / "highlight_val_release.jsonl"
DATASET = "qvhighlights:val"
# the module `granalign` imports for each command (harness/cli/__init__.py COMMANDS)
START_UP = {"--help": "harness.cli", "ls": "harness.cli.ls", "eval": "harness.cli.eval",
            "run": "harness.cli.run", "table": "harness.cli.study", "cache": "harness.cli.cache",
            "cache build": "harness.cli.build"}


# the steps of `granalign eval`, timed in a new process (argv: data root, dataset, predictions)
EVAL_STEPS = """
import json, sys, time
t = [time.perf_counter()]
from harness.cli import build_parser
build_parser(["eval"])  # imports harness.cli.eval and what it imports, as the command does
from harness.cli.eval import format_metrics
from harness.data.spec import load_dataset
from harness.eval.predictions import load_predictions
from harness.eval.protocols import protocol_of
t.append(time.perf_counter())
dataset = load_dataset(sys.argv[2], sys.argv[1])
t.append(time.perf_counter())
preds = load_predictions(sys.argv[3])
t.append(time.perf_counter())
result = protocol_of(sys.argv[2]).evaluate(dataset.queries, preds, per_query={})
t.append(time.perf_counter())
format_metrics(result, sys.argv[2])
t.append(time.perf_counter())
names = ("imports", "read ground truth", "read predictions", "evaluate", "report")
print(json.dumps({n: b - a for n, a, b in zip(names, t, t[1:])}))
"""


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(cmd: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        ok: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, out.stdout


def best(n: int, cmd: Sequence[str], **kw: object) -> float:
    return min(run(cmd, **kw)[0] for _ in range(n))  # type: ignore[arg-type]


def granalign_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "granalign"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "harness.cli"]


def section_startup(args: argparse.Namespace, g: list[str]) -> None:
    n = args.repeats
    print(f"== start-up (best of {n} new processes; load average {load()})")
    print(f"   {best(n, [sys.executable, '-c', 'pass']):6.3f} s  the interpreter alone (python -c pass)")
    for command, module in START_UP.items():
        print(f"   {best(n, [sys.executable, '-c', f'import {module}']):6.3f} s  "
              f"start-up of granalign {command} (import {module})")
    print(f"   {best(n, [*g, '--help']):6.3f} s  granalign --help (whole process; target < 0.3 s)")


def section_eval(args: argparse.Namespace, g: list[str], work: Path) -> None:
    n, root = args.repeats, Path(args.data_root)
    ours_cmd = [*g, "eval", "--dataset", DATASET, "--pred", str(root / PRED), "--data-root", str(root)]
    official = Path(args.official) if args.official else None
    if official is not None and not (official / "standalone_eval" / "eval.py").is_file():
        raise SystemExit(f"--official {official}: no standalone_eval/eval.py there")
    saved = work / "official_metrics.json"
    official_cmd = [sys.executable, "standalone_eval/eval.py", "--submission_path", str(root / PRED),
                    "--gt_path", str(root / GT), "--save_path", str(saved)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), "."]))}
    print(f"== granalign eval vs the official evaluator, {DATASET}, {PRED.name} "
          f"(alternated, {n} each; load average {load()})")
    ours, theirs = [], []
    for _ in range(n):
        ours.append(run(ours_cmd)[:2])
        if official is not None:
            theirs.append(run(official_cmd, cwd=official, env=env)[:2])
    o = min(ours)
    print(f"   granalign eval: best {o[0]:.3f} s ({o[1]:.2f} CPU-s); all {', '.join(f'{w:.3f}' for w, _ in ours)}")
    if theirs:
        t = min(theirs)
        print(f"   official      : best {t[0]:.3f} s ({t[1]:.2f} CPU-s, its pool of 8 workers); "
              f"all {', '.join(f'{w:.3f}' for w, _ in theirs)}")
        print(f"   ratio of the best times: {t[0] / o[0]:.1f}x (target >= 15x)")
        mine = json.loads(run([*ours_cmd, "--json"])[2])["brief"]
        ref = json.loads(saved.read_text())["brief"]
        off = {k: (mine.get(k), v) for k, v in ref.items() if mine.get(k) is None or abs(mine[k] - v) > 0.005}
        print(f"   brief metrics: {len(ref) - len(off)} of {len(ref)} official ones equal to 0.005"
              + (f"; differ: {off}" if off else ""))
    else:
        print("   official: skipped (no --official checkout of jayleicn/moment_detr)")
    steps = [json.loads(run([sys.executable, "-c", EVAL_STEPS, str(root), DATASET, str(root / PRED)])[2])
             for _ in range(n)]
    print(f"   steps of granalign eval (best of {n} new processes; the interpreter's own start not included):")
    for name in steps[0]:
        print(f"   {min(s[name] for s in steps):6.3f} s  {name}")


def section_commands(args: argparse.Namespace, g: list[str], work: Path) -> None:
    n, root = args.repeats, Path(args.data_root)
    folder = work / "commands"
    folder.mkdir()
    print(f"== the README's commands, new processes in {folder} (load average {load()})")
    ls = [run([*g, "ls"], cwd=folder)[0] for _ in range(n)]
    print(f"   granalign ls: best {min(ls):.3f} s (no cache read)")
    demo = [*g, "table", "3", "--demo", "--cache", str(folder / "demo-cache")]
    for state in ("cold", "warm"):
        wall, cpu, out = run(demo, cwd=folder)
        inner = re.search(r"; ([0-9.]+) s; study", out)
        print(f"   granalign table 3 --demo ({state}): {wall:.1f} s ({cpu:.1f} CPU-s); the table step "
              f"itself {inner.group(1) if inner else '?'} s (load average {load()})")
    qvh = Path(args.qvh_cache)
    if not (qvh / "cache.sqlite").is_file():
        print(f"   granalign run: skipped ({qvh} holds no cache: `make cache-qvh` fills one)")
        return
    cmd = [*g, "run", str(REPO / "experiments" / "granalign_qvh_minigptv2.yaml"), "--cache", str(qvh),
           "--data-root", str(root), "--out", str(folder / "run")]
    for state in ("first", "again"):
        wall, cpu, out = run(cmd, cwd=folder, ok=(0, 3))
        inner = re.search(r"\(([0-9.]+) s\)\s*$", out)
        print(f"   granalign run granalign_qvh_minigptv2.yaml ({state}): {wall:.1f} s ({cpu:.1f} CPU-s); "
              f"the run itself {inner.group(1) if inner else '? (nothing to run on?)'} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--official", default=None, help="a checkout of jayleicn/moment_detr")
    ap.add_argument("--data-root", default=os.environ.get("GRANALIGN_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--qvh-cache", default=os.environ.get("GRANALIGN_CACHE", str(REPO / ".granalign" / "cache")),
                    help="a QVHighlights val cache for `granalign run` (default: $GRANALIGN_CACHE or .granalign/cache)")
    ap.add_argument("--sections", default="startup,eval,commands")
    ap.add_argument("--work", default=None, help="working folder (default: a new temporary one, removed after)")
    args = ap.parse_args(argv)
    g = granalign_cmd()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_commands-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{' '.join(g)}; {os.cpu_count()} CPUs; load average {load()}")
    try:
        sections = args.sections.split(",")
        if "startup" in sections:
            section_startup(args, g)
        if "eval" in sections:
            section_eval(args, g, work)
        if "commands" in sections:
            section_commands(args, g, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
