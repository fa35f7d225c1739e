"""Evaluation protocols by name: what a `DatasetSpec.protocol` names.

A protocol is an evaluator (ground truth + predictions -> metrics, with the flat `brief`
dict every table and sweep reads) and the keys `brief` holds. Datasets say which protocol
applies; tables and sweeps check the metric keys they name against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.core.query import Query
from harness.core.registries import PROTOCOLS
from harness.data.spec import dataset_spec

Evaluator = Callable[..., dict[str, Any]]
# brief metric -> (per-query values, the queries the metric averages over)
PerQuery = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Protocol:
    """`evaluate(gt, rows)` scores prediction rows (a file); `ground_truth(gt)` turns the
    queries into the arrays `score(g, windows, saliency, lengths, highlights)` reads, which
    is what `evaluate` runs too and what a trial calls directly on its arrays."""

    name: str
    evaluate: Evaluator
    metric_keys: tuple[str, ...]
    ground_truth: Callable[[Sequence[Query]], Any]
    score: Callable[..., dict[str, Any]]

    def describe(self) -> str:
        return f"{(self.evaluate.__doc__ or '').strip().splitlines()[0]} Keys: {', '.join(self.metric_keys)}"




def protocol_of(dataset: str) -> Protocol:
    """The protocol of a registered dataset."""
    return PROTOCOLS.get(dataset_spec(dataset).protocol)


def evaluate(dataset: str, gt: Sequence[Query], preds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Score predictions with the protocol of `dataset`."""
    return protocol_of(dataset).evaluate(gt, preds)


def brief(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The flat metric dict every protocol reports under `brief`."""
    return dict(metrics["brief"])


def all_metric_keys() -> frozenset[str]:
    return frozenset(k for name in PROTOCOLS for k in PROTOCOLS.get(name).metric_keys)
