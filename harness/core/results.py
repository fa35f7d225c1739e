"""What a computation gives when it cannot give numbers: one `Missing`, one `Failed`.

A run, a table cell or an efficiency figure either has its metrics or says why not. A
`Missing` names an input that is absent (a cache stage and backend, a dataset, ground
truth, build timings); a `Failed` names an error raised while computing. Both render as
the short label a table cell shows (`missing: captions_aware/qwen2.5-vl`, `failed: ...`)
and carry details for the command line; `SameAs` and `Running` say the numbers are another
row's, or are being computed by another process. No other type plays these roles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.core.errors import HarnessError

MISSING_PREFIX = "missing: "
FAILED_PREFIX = "failed: "


@dataclass(frozen=True)
class Missing:
    """An input a result needs and does not have.

    `what` is a cache `stage/backend` (`captions_aware/qwen2.5-vl`), `dataset NAME`,
    `ground truth (NAME)` or `timings/stage/backend`; `count` of `total` `unit` says how
    much of it is absent. `also` lists further absent inputs of the same result, so a cell
    shows every gap, not only the first.
    """

    what: str
    count: int | None = None
    total: int | None = None
    unit: str = "items"
    hint: str = ""
    also: tuple[str, ...] = ()

    @classmethod
    def stage(cls, stage: str, backend: str, count: int | None = None, total: int | None = None,
              unit: str = "items", hint: str = "") -> Missing:
        return cls(f"{stage}/{backend}", count, total, unit, hint)

    @classmethod
    def merge(cls, gaps: Sequence[Missing]) -> Missing:
        """One cell-sized `Missing` for several gaps (the first keeps its details)."""
        if not gaps:
            raise ValueError("Missing.merge needs at least one gap")
        whats = list(dict.fromkeys(g.what for g in gaps))
        first = gaps[0]
        return cls(first.what, first.count, first.total, first.unit, first.hint, tuple(whats[1:]))

    @classmethod
    def from_label(cls, label: str) -> Missing:
        """Inverse of `label` (how a table read back from MLflow recovers the cell)."""
        parts = [p[len(MISSING_PREFIX):] if p.startswith(MISSING_PREFIX) else p
                 for p in label.split("; ")]
        return cls(parts[0], also=tuple(parts[1:]))

    @property
    def label(self) -> str:
        """The short reason a table cell shows."""
        return "; ".join(MISSING_PREFIX + w for w in (self.what, *self.also))

    def __str__(self) -> str:
        text = MISSING_PREFIX + self.what
        if self.count is not None and self.total is not None:
            text += f" ({self.count} of {self.total} {self.unit})"
        if self.hint:
            text += f"; {self.hint}"
        return "; ".join([text, *(MISSING_PREFIX + w for w in self.also)])


@dataclass(frozen=True)
class Failed:
    """A result whose computation raised: the reason is the error, in one line."""

    reason: str

    @classmethod
    def from_error(cls, err: BaseException) -> Failed:
        return cls(f"{type(err).__name__}: {err}".splitlines()[0][:500])

    @property
    def label(self) -> str:
        return FAILED_PREFIX + self.reason

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class SameAs:
    """A result that is another row's computation (equal configs after a substitution)."""

    row: str

    @property
    def label(self) -> str:
        return f"same as row {self.row}"

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Running:
    """A result another process is computing right now (a concurrent run of the same
    table): not failed, not missing; the table shown meanwhile is not the table."""

    where: str  # "host:pid" of the worker

    @property
    def label(self) -> str:
        return f"running elsewhere ({self.where})"

    def __str__(self) -> str:
        return self.label


Outcome = Mapping[str, Any] | Missing | Failed | SameAs | Running  # metrics, or why there are none here


class MissingInputs(HarnessError):
    """The cache (or the data root) cannot feed a run; every gap is listed, nothing is written."""

    def __init__(self, missing: Sequence[Missing], dataset: str = "", note: str = "") -> None:
        self.missing = list(missing)
        self.dataset = dataset
        lines = "\n".join(f"  - {m}" for m in self.missing)
        super().__init__(
            f"the cache cannot feed this run on {dataset or 'this dataset'}; nothing was written:\n{lines}"
            + (f"\n  note: {note}" if note else "")
        )

    @property
    def label(self) -> str:
        return self.as_missing().label

    def as_missing(self) -> Missing:
        return Missing.merge(self.missing)
