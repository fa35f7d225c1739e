"""A toy dataset, added the way any dataset is: one module, one decorator.

`toy:val` has three queries on two videos, with ground truth; it needs no files. Tests use
it where a config must name a registered dataset but no real data is read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.core.query import Query
from harness.data import register_dataset


@register_dataset("toy", splits=("val",), protocol="top1", synthetic=True,
                  description="three hand-made queries (tests/toy_dataset.py)")
def load_toy(root: Path, split: str) -> tuple[Sequence[Query], str]:
    queries = [
        Query(0, "t0", "a dog runs", 20.0, ((4.0, 10.0),)),
        Query(1, "t0", "a dog sleeps", 20.0, ((12.0, 20.0),)),
        Query(2, "t1", "a cat jumps", 9.0, ((0.0, 4.0),)),
    ]
    return queries, "toy (tests/toy_dataset.py)"
