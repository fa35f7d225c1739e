"""The query record every stage sees, and a loaded split of a dataset.

Every dataset loader turns its source format into `Query` records so that the cache
builder, the scoring and the evaluators see one shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from harness.core.constants import CLIP_SECONDS


def n_clips(duration: float) -> int:
    """Clips of CLIP_SECONDS that cover `duration` (a partial last clip counts)."""
    return max(1, math.ceil(round(duration / CLIP_SECONDS, 6)))


@dataclass(frozen=True)
class Query:
    """One moment-retrieval query with its ground truth.

    `windows` are GT spans in seconds (empty where the split publishes no ground truth).
    `saliency` (QVHighlights only) maps clip id -> the annotators' scores (0-4 each); it
    feeds the highlight-detection metrics.
    """

    qid: int
    vid: str
    query: str
    duration: float
    windows: tuple[tuple[float, float], ...]
    saliency: dict[int, tuple[int, ...]] | None = field(default=None, compare=False)

    @property
    def n_clips(self) -> int:
        """Frames (2-s clips at 0.5 fps) that cover the whole video."""
        return n_clips(self.duration)

    def to_gt_row(self) -> dict[str, Any]:
        """The official QVHighlights GT jsonl row, for tools that expect that format."""
        row: dict[str, Any] = {
            "qid": self.qid,
            "query": self.query,
            "duration": self.duration,
            "vid": self.vid,
            "relevant_windows": [list(w) for w in self.windows],
        }
        if self.saliency is not None:
            row["relevant_clip_ids"] = list(self.saliency)
            row["saliency_scores"] = [list(s) for s in self.saliency.values()]
        return row


@dataclass(frozen=True)
class Dataset:
    """A loaded split: its queries in file order, where they came from, what it is.

    `name` is the registered name (`qvhighlights:val`); `family` groups the splits that
    share videos (cache keys of videos use it); `limit` is set on a first-N subset.
    """

    name: str
    queries: tuple[Query, ...]
    source: str = ""
    family: str = ""
    split: str = ""
    synthetic: bool = False
    limit: int | None = None

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def label(self) -> str:
        """The name as shown to a user: `qvhighlights:val[:20]` for a subset."""
        return f"{self.name}[:{self.limit}]" if self.limit is not None else self.name

    @property
    def videos(self) -> dict[str, float]:
        """vid -> duration, in first-seen order."""
        out: dict[str, float] = {}
        for q in self.queries:
            out.setdefault(q.vid, q.duration)
        return out

    @property
    def has_ground_truth(self) -> bool:
        """Every query has GT windows (the public QVHighlights test split has none)."""
        return bool(self.queries) and all(q.windows for q in self.queries)

    def by_qid(self) -> dict[int, Query]:
        return {q.qid: q for q in self.queries}

    def subset(self, n: int) -> Dataset:
        """The first `n` queries: a quick look, or a CI-sized slice of a real split."""
        return replace(self, queries=self.queries[:n], limit=n)

    def with_queries(self, queries: tuple[Query, ...]) -> Dataset:
        """The same split restricted to `queries` (a shard of the builder)."""
        return replace(self, queries=queries)
