"""How the builder cuts its work: shards across machines, batches inside a shard.

Two builds must write the same cache whether they ran as one process or as N shards, and
whether they ran through or were killed and resumed. Greedy decoding is deterministic for
a fixed input, but in half precision a sequence's logits can move by a rounding step with
its batch mates (left padding to a longer prompt, and the GEMM kernel a batch size picks),
and a near-tie token then flips. So the invariant we keep is not "a caption depends only
on its frame and prompt" (it does not, bit for bit, in bf16) but **a sample's batch is a
function of the dataset alone**:

- Videos fall into `SHARD_BUCKETS` buckets by sha256 of their id; shard i of N takes the
  buckets b with b mod N == i. A bucket never splits across shards, for any N up to
  `SHARD_BUCKETS` (for N a power of two the assignment equals plain sha256 mod N).
- Work that crosses videos (the rewriter's query texts) is batched inside one bucket;
  work on frames (captions, frame scores) inside one video.
- Inside a group, items are sorted (by prompt length, then text, so that equal-length
  prompts share a batch and padding is small) and cut into batches of `batch_size`. The
  plan covers every item of the group, cached or not; a batch with anything missing is
  run whole and only the missing items are written. A resumed build therefore runs the
  same batches as an uninterrupted one.

What still changes results: a different `batch_size`, device, dtype, attention kernel or
library version. Shards of one build must use the same settings (the runbook says so).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

SHARD_BUCKETS = 64  # the most shards a build can use; each bucket lives in one shard


def shard_bucket(vid: str) -> int:
    """The bucket of a video: sha256(vid) mod `SHARD_BUCKETS` (stable across machines)."""
    return int(hashlib.sha256(vid.encode("utf-8")).hexdigest()[:16], 16) % SHARD_BUCKETS


def shard_of(vid: str, n: int) -> int:
    """The shard (of `n`) a video belongs to: its bucket mod n."""
    if not 1 <= n <= SHARD_BUCKETS:
        raise ValueError(f"a build has 1 to {SHARD_BUCKETS} shards, got {n}")
    return shard_bucket(vid) % n


def plan_batches(
    items: Sequence[T],
    batch_size: int,
    sort_key: Callable[[T], Any] | None = None,
    group_key: Callable[[T], Hashable] | None = None,
) -> list[list[T]]:
    """Cut `items` into batches that depend on the items alone.

    Items are grouped by `group_key` (groups in order of first appearance; one group if
    None), sorted inside each group by `sort_key` (stable: ties keep input order), and cut
    into consecutive batches of at most `batch_size`. A batch never spans two groups.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(group_key(item) if group_key else 0, []).append(item)
    batches: list[list[T]] = []
    for members in groups.values():
        ordered = sorted(members, key=sort_key) if sort_key else members
        batches.extend(ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size))
    return batches


def batches_to_run(batches: Iterable[list[T]], needed: set[T]) -> list[list[T]]:
    """The planned batches that hold at least one needed item (each run whole)."""
    return [b for b in batches if any(x in needed for x in b)]
