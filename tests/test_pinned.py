"""CHANGE DETECTORS: the metrics of the public-data configs on all of QVHighlights val,
pinned to two decimals.

These numbers are not "right" in themselves: they pin what the harness computes today from
the public inputs (MiniGPT-v2 captions and Baichuan2 paraphrases of the VTG-GPT release,
all-MiniLM-L6-v2 embeddings through ONNX Runtime, the default backend, 1550 val queries), so that anything that moves a number on the
real data (the method, the evaluator, the cache reader, the importers, the embedder or its
package) fails here with the old and the new value. The independent per-query reference
(tests/reference_impl.py) must reproduce the same rows and numbers.

A change of these numbers is legitimate only with a reason named in its commit: a deliberate
fix of the method or the evaluator (then the reference changes with it), another release of
the input files, another embedder model or package version. Regenerate them with

    make cache-qvh SPLIT=val
    python -m tests.test_pinned --cache .granalign/cache     # prints PINNED

and check the same numbers with `granalign run experiments/<config>.yaml` (the q-Ca row was
49.68 / 32.00 / 45.16 / 26.49 and VTG-GPT 54.26 / 34.39 / 52.94 / 32.87 for R1@0.5 / R1@0.7
/ mAP@0.5 / mAP@avg when they were pinned). With the embedder on torch (`embedder_backend: torch`),
every moment-retrieval metric is the same; four highlight metrics of `q-Ca+qp-Ca, m=5` were
0.01-0.06 higher (Fair-Hit1 74.45, Good-mAP 55.19, Good-Hit1 72.06, VeryGood-Hit1 59.03):
a saliency tie broken by float32 rounding, one query.

Cost: the session fixture `qvh_val_cache` embeds the split once (about 8 minutes on 2 CPU
cores); GRANALIGN_TEST_QVH_CACHE names a cache built already (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from harness.config import ExperimentConfig, load_config
from harness.method.recipes import predict
from harness.runner.trial import InputPool, trial
from tests.reference_impl import reference_metrics, reference_rows, rows_close

REPO = Path(__file__).resolve().parents[1]

# (config file, overrides) -> every brief metric on all 1550 val queries
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "q-Ca (GranAlign recipe)": ("granalign_qvh_minigptv2.yaml", {}),
    "q-Ca+qp-Ca, m=5 (GranAlign recipe)": ("granalign_qvh_minigptv2.yaml", {"pairing": "q-Ca+qp-Ca", "m": 5}),
    "VTG-GPT": ("vtg_gpt_qvh.yaml", {}),
}
PINNED: dict[str, dict[str, float]] = {
    "q-Ca (GranAlign recipe)": {
        "MR-full-R1@0.3": 66.52, "MR-full-R1@0.5": 49.68, "MR-full-R1@0.7": 32.0, "MR-full-mAP": 26.49,
        "MR-full-mAP@0.5": 45.16, "MR-full-mAP@0.75": 25.78, "MR-full-mIoU": 47.27, "MR-long-mAP": 24.81,
        "MR-middle-mAP": 31.11, "MR-short-mAP": 3.92, "HL-min-Fair-mAP": 64.03, "HL-min-Fair-Hit1": 73.42,
        "HL-min-Good-mAP": 54.94, "HL-min-Good-Hit1": 70.9, "HL-min-VeryGood-mAP": 33.43,
        "HL-min-VeryGood-Hit1": 57.81,
    },
    "q-Ca+qp-Ca, m=5 (GranAlign recipe)": {
        "MR-full-R1@0.3": 67.1, "MR-full-R1@0.5": 52.13, "MR-full-R1@0.7": 33.23, "MR-full-mAP": 30.6,
        "MR-full-mAP@0.5": 50.2, "MR-full-mAP@0.75": 30.44, "MR-full-mIoU": 48.58, "MR-long-mAP": 30.31,
        "MR-middle-mAP": 35.4, "MR-short-mAP": 4.05, "HL-min-Fair-mAP": 64.38, "HL-min-Fair-Hit1": 74.39,
        "HL-min-Good-mAP": 55.18, "HL-min-Good-Hit1": 72.0, "HL-min-VeryGood-mAP": 33.59,
        "HL-min-VeryGood-Hit1": 58.97,
    },
    "VTG-GPT": {
        "MR-full-R1@0.3": 71.74, "MR-full-R1@0.5": 54.26, "MR-full-R1@0.7": 34.39, "MR-full-mAP": 32.87,
        "MR-full-mAP@0.5": 52.94, "MR-full-mAP@0.75": 32.62, "MR-full-mIoU": 51.1, "MR-long-mAP": 34.99,
        "MR-middle-mAP": 36.97, "MR-short-mAP": 3.49, "HL-min-Fair-mAP": 64.26, "HL-min-Fair-Hit1": 74.77,
        "HL-min-Good-mAP": 55.01, "HL-min-Good-Hit1": 72.39, "HL-min-VeryGood-mAP": 33.53,
        "HL-min-VeryGood-Hit1": 60.0,
    },
}


def config(label: str) -> ExperimentConfig:
    name, overrides = CONFIGS[label]
    return load_config(REPO / "experiments" / name, overrides)


@pytest.fixture(scope="module")
def pool(qvh_val_cache: Any, data_root: Path) -> InputPool:
    return InputPool(qvh_val_cache, data_root)


@pytest.mark.slow  # the full val cache: built once per session (tests/conftest.py)
@pytest.mark.parametrize("label", list(CONFIGS))
def test_pinned_metrics_on_all_of_val(pool: InputPool, label: str) -> None:
    cfg = config(label)
    prep = pool.get(cfg)
    assert len(prep.queries) == 1550
    got = trial(prep, cfg)["brief"]
    moved = {k: (v, got.get(k)) for k, v in PINNED[label].items() if got.get(k) != v}
    assert not moved, f"{label}: pinned metric -> (pinned, now); see this file's docstring: {moved}"


@pytest.mark.slow
@pytest.mark.parametrize("label", list(CONFIGS))
def test_the_reference_reproduces_the_pinned_run(pool: InputPool, label: str) -> None:
    """The per-query reference gives the harness's windows on all 1550 queries, and its
    evaluator the pinned numbers from them."""
    cfg = config(label)
    prep = pool.get(cfg)
    ours = predict(prep, cfg).rows(prep.queries)
    problems = rows_close(ours, reference_rows(prep, cfg))
    assert not problems, problems[:3]
    assert reference_metrics(prep.queries, ours) == PINNED[label]


def main() -> None:
    """Print PINNED as computed from a cache (what to paste above after a legitimate change)."""
    from harness.cache.store import Cache

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--cache", required=True, help="a cache with all of val (make cache-qvh SPLIT=val)")
    ap.add_argument("--data-root", default=None, help="benchmark data (default $GRANALIGN_DATA)")
    args = ap.parse_args()
    pool = InputPool(Cache(args.cache, readonly=True), args.data_root)
    out = {label: trial(pool.get(config(label)), config(label))["brief"] for label in CONFIGS}
    print(json.dumps(out, indent=4))


if __name__ == "__main__":
    main()
