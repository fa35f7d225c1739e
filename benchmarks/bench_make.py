"""Benchmark: a README make target on a cold and then a warm cache, and what each step costs.

    GRANALIGN_DATA=../shared/data .venv/bin/python benchmarks/bench_make.py \\
        --target ablation-table3 --cache /tmp/cold-cache [--make-args "EMBEDDER=mpnet"]

Runs `make TARGET` twice with `GRANALIGN_CACHE` set to `--cache` (which must not exist: the
first run is cold), the virtualenv already built (`--venv`, default .venv; make is told not
to reinstall it). Every `granalign` command the target runs goes through this script's
`--step` mode, which times it; the figures printed are the wall time and CPU seconds of
each step and the wall time of the whole target, cold and warm, with the load average (on
a shared machine the CPU seconds are the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step(log: Path, command: list[str]) -> int:
    """Run one granalign command and append its wall time to `log` (JSON lines)."""
    t0 = time.perf_counter()
    rc = subprocess.call(command)
    wall = time.perf_counter() - t0
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = command[1:]
    name = " ".join(a for a in args[:4] if not a.startswith("/"))
    row = {"step": name, "args": args, "seconds": wall, "cpu_seconds": used.ru_utime + used.ru_stime,
           "load": _load(), "rc": rc}
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return rc


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--step":
        return step(Path(sys.argv[2]), sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="ablation-table3")
    ap.add_argument("--cache", required=True,
                    help="a cache folder that does not exist yet (with --runs warm: a filled one)")
    ap.add_argument("--venv", default=str(REPO / ".venv"), help="the built virtualenv")
    ap.add_argument("--make-args", default="", help="extra make variables, e.g. 'EMBEDDER=mpnet'")
    ap.add_argument("--runs", default="cold,warm",
                    help="runs in order, e.g. warm,warm-again on a filled --cache (the Optuna and MLflow "
                         "stores of the checkout are used as they are: a new study computes its rows)")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    if cache.exists() and "cold" in args.runs.split(","):
        ap.error(f"{cache} exists: a cold run must start from an empty cache")
    venv = Path(args.venv).resolve()
    granalign = venv / "bin" / "granalign"
    totals = {}
    for run in args.runs.split(","):
        log = Path(f"{cache}.{run}.steps.jsonl")
        log.unlink(missing_ok=True)
        wrapper = f"{shlex.quote(str(venv / 'bin' / 'python'))} {shlex.quote(str(Path(__file__).resolve()))} " \
                  f"--step {shlex.quote(str(log))} {shlex.quote(str(granalign))}"
        cmd = ["make", "-C", str(REPO), args.target, f"VENV={venv}", f"GRANALIGN={wrapper}",
               "-o", f"{venv}/.installed-stamp", *shlex.split(args.make_args)]
        env = {**os.environ, "GRANALIGN_CACHE": str(cache.resolve())}
        print(f"== {run}: {' '.join(cmd[:4])} ... (load average {_load()})", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        totals[run] = time.perf_counter() - t0
        print(f"== {run}: make {args.target} exited {rc} after {totals[run]:.1f} s (load average {_load()})")
        for row in (json.loads(line) for line in log.read_text().splitlines()) if log.exists() else ():
            print(f"   {row['seconds']:8.1f} s  {row.get('cpu_seconds', float('nan')):8.1f} CPU-s  "
                  f"granalign {row['step']}  (load average {row.get('load', '?')})")
        if rc:
            return rc
    print(json.dumps({"target": args.target, "seconds": {k: round(v, 1) for k, v in totals.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
