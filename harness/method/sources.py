"""Reading a run's inputs out of the cache: similarities of query and caption kinds.

A query kind (`q`, `qs`, `qd`, `qp`) knows which cached entry holds its texts; a caption
kind (`Ca`, `Cq`) likewise (`harness.method.kinds`). `prepare()` reads everything a set of pairs needs, once, and
turns it into raw cosine similarity tensors; trials then only do arithmetic. Whatever the
cache lacks is collected first and reported in one `MissingInputs` error that names the
stage, the backend and how many items are missing, before anything is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.cache.producers import query_item
from harness.cache.store import Cache, Entry, Producer
from harness.core.query import Dataset, Query
from harness.core.registries import CAPTION_KINDS, QUERY_KINDS
from harness.core.results import Missing, MissingInputs
from harness.method.kinds import Pair, SourceSpec


# -- prepared inputs ---------------------------------------------------------------------------
@dataclass
class Prepared:
    """Raw similarities for a dataset, ready for any number of trials.

    `sims[(x, C)]` is `(Q, m_x, T_max)` raw cosine, NaN past each video's `n_frames`;
    for `Cq` it is NaN outside the frames that have an aware caption, whose rank is in
    `aware_rank` `(Q, T_max)`. With several embedders (an ensemble) it is the mean of their
    cosines; `lexical` holds the lemma-bag cosines of the same pairs where a run fuses them.
    """

    dataset: str
    queries: tuple[Query, ...]
    n_frames: np.ndarray
    sims: dict[Pair, np.ndarray]
    aware_rank: np.ndarray | None
    fingerprint: str
    spec: SourceSpec
    synthetic: bool = False
    lexical: dict[Pair, np.ndarray] | None = None
    _memo: dict[Hashable, Any] = field(default_factory=dict, repr=False, compare=False)

    def memo(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """`make()` once per key for these inputs: what many trials share (score curves of
        one pairing and normalisation, the ground truth's arrays, a query subset)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def t_max(self) -> int:
        return int(self.n_frames.max()) if self.n_frames.size else 0

    def head(self, n: int) -> Prepared:
        """The first `n` queries: what a pruned sweep trial scores before the rest."""
        return self.memo(("head", n), lambda: self._select(np.arange(min(n, len(self.queries)))))

    def select(self, indices: Sequence[int]) -> Prepared:
        """The queries at `indices` (in that order): a cross-validation fold."""
        idx = np.asarray(indices, dtype=np.int64)
        return self.memo(("select", idx.tobytes()), lambda: self._select(idx))

    def _select(self, idx: np.ndarray) -> Prepared:
        def take(d: dict[Pair, np.ndarray] | None) -> dict[Pair, np.ndarray] | None:
            return None if d is None else {k: v[idx] for k, v in d.items()}

        sims = take(self.sims)
        assert sims is not None
        return Prepared(
            self.dataset, tuple(self.queries[i] for i in idx), self.n_frames[idx], sims,
            None if self.aware_rank is None else self.aware_rank[idx],
            self.fingerprint, self.spec, self.synthetic, take(self.lexical),
        )


def _required_pairs(pairs: Iterable[Pair], cq_fallback: str) -> set[Pair]:
    need = set(pairs)
    for x, c in list(need):
        if c == "Cq" and cq_fallback == "ca":
            need.add((x, "Ca"))
    return need


def prepare(
    cache: Cache,
    dataset: Dataset,
    spec: SourceSpec,
    pairs: Iterable[Pair],
    cq_fallback: str = "ca",
) -> Prepared:
    """Read every entry and embedding that `pairs` need; raise MissingInputs listing gaps."""
    need = _required_pairs(pairs, cq_fallback)
    queries = dataset.queries
    cache.reset_reads()  # the fingerprint covers exactly what this preparation read
    qkinds = {x: QUERY_KINDS.get(x)() for x in sorted({x for x, _ in need})}
    ckinds = {c: CAPTION_KINDS.get(c)() for c in sorted({c for _, c in need})}
    missing: list[Missing] = []
    name = dataset.label

    # 1. text entries
    entries: dict[str, list[Entry | None]] = {}

    def fetch(label: str, producer: Producer, items: list[dict[str, Any]], unit: str) -> None:
        got = cache.get_many(producer, items)
        rows = [got.get(producer.key(it)) for it in items]
        absent = sum(1 for r in rows if r is None)
        failed = sum(1 for r in rows if r is not None and r.status != "ok")
        if absent or failed:
            hint = f"{failed} failed" if failed else ""
            missing.append(Missing.stage(producer.stage, producer.backend, absent + failed, len(rows), unit, hint))
        entries[label] = rows

    for kind in qkinds.values():
        producer = kind.producer(spec)
        if producer is not None and f"q:{producer.digest}" not in entries:
            fetch(f"q:{producer.digest}", producer, [query_item(q) for q in queries], "queries")
    for c, kind in ckinds.items():
        try:
            producer = kind.producer(spec)
        except ValueError as e:  # e.g. a backbone without an aware mode
            stage = "captions_aware" if kind.per_query else "captions_agnostic"
            missing.append(Missing.stage(stage, spec.captions, len(queries), len(queries), "queries", str(e)))
            continue
        items = [kind.item(dataset.family, q) for q in queries]
        fetch(f"c:{c}", producer, items, "queries")
    if missing:
        raise MissingInputs(missing, name, note=cache.absence_note)

    # 2. texts -> embeddings
    def query_texts(x: str, i: int) -> list[str]:
        kind = qkinds[x]
        producer = kind.producer(spec)
        entry = entries[f"q:{producer.digest}"][i] if producer is not None else None
        return kind.texts(queries[i], entry)

    # every text list is named first, then all matrices are read in one batch
    wanted: list[list[str]] = []

    def slot(texts: list[str]) -> int:
        wanted.append(texts)
        return len(wanted) - 1

    q_slots = {x: [slot(query_texts(x, i)) for i in range(len(queries))] for x in qkinds}
    ca_rows = entries.get("c:Ca")
    cq_rows = entries.get("c:Cq")
    ca_slots: dict[str, int] = {}
    if ca_rows is not None:
        for q, e in zip(queries, ca_rows, strict=True):
            if q.vid not in ca_slots and e is not None:
                ca_slots[q.vid] = slot(list(e.value))
    cq_slots = [slot(list(e.value["captions"])) if e is not None else -1 for e in cq_rows] if cq_rows else []
    # every model's matrices of those lists: the semantic embedders (averaged: an ensemble)
    # and, where a run fuses it, the lexical one; what any of them lacks is reported at once
    models = (*spec.embedder_models, *((spec.lexical_model,) if spec.lexical_model else ()))
    by_model = {mid: cache.get_embeddings_many(mid, wanted) for mid in models}
    gaps = [Missing.stage("embeddings", mid, lacking, len(wanted), "text lists",
                          f"run: granalign cache embed --dataset {dataset.name}")
            for mid, matrices in by_model.items()
            if (lacking := sum(1 for t, m in zip(wanted, matrices, strict=True) if t and m is None))]
    if gaps:
        raise MissingInputs(gaps, name, note=cache.absence_note)

    # 3. frame counts: the agnostic captions (one per decoded frame), else the clip grid
    n_frames = np.array(
        [len(ca_rows[i].value) if ca_rows is not None else q.n_clips for i, q in enumerate(queries)],
        dtype=np.int64,
    )
    t_max = int(n_frames.max()) if len(queries) else 0
    nq = len(queries)

    aware_rank = None
    cq_cols: list[np.ndarray] = []
    if cq_rows is not None:
        aware_rank = np.full((nq, t_max), np.iinfo(np.int32).max, dtype=np.int64)
        for i, e in enumerate(cq_rows):
            assert e is not None
            frames = np.asarray(e.value["frames"], dtype=np.int64)
            ok = frames < n_frames[i]
            cols = frames[ok]
            aware_rank[i, cols] = np.arange(frames.size)[ok]
            cq_cols.append(np.flatnonzero(ok))

    def similarities(matrices: list[np.ndarray | None]) -> dict[Pair, np.ndarray]:
        """Raw cosine `(Q, m_x, T_max)` per pair from one model's matrices."""
        q_emb = {x: [matrices[k] for k in ks] for x, ks in q_slots.items()}
        ca_emb = {vid: matrices[k] for vid, k in ca_slots.items()}
        cq_emb = [matrices[k] if k >= 0 else None for k in cq_slots]
        out_sims: dict[Pair, np.ndarray] = {}
        for x, c in sorted(need):
            m_x = max(int(q_emb[x][i].shape[0]) for i in range(nq)) if nq else 1
            out = np.full((nq, m_x, t_max), np.nan, dtype=np.float32)
            for i, q in enumerate(queries):
                qe = q_emb[x][i]
                assert qe is not None
                if c == "Ca":
                    ce = ca_emb[q.vid]
                    assert ce is not None
                    out[i, : qe.shape[0], : n_frames[i]] = qe @ ce[: n_frames[i]].T
                else:
                    ce = cq_emb[i]
                    assert ce is not None and cq_rows is not None
                    frames = np.asarray(cq_rows[i].value["frames"], dtype=np.int64)
                    keep = cq_cols[i]
                    row = out[i]  # a view; row[:m, cols] keeps (m, len(cols)) order
                    row[: qe.shape[0], frames[keep]] = qe @ ce[keep].T
            out_sims[(x, c)] = out
        return out_sims

    members = [similarities(by_model[mid]) for mid in spec.embedder_models]
    sims = members[0] if len(members) == 1 else {
        pair: np.mean(np.stack([m[pair] for m in members]), axis=0).astype(np.float32) for pair in members[0]}
    lexical = similarities(by_model[spec.lexical_model]) if spec.lexical_model else None
    return Prepared(name, tuple(queries), n_frames, sims, aware_rank, cache.fingerprint(), spec,
                    dataset.synthetic, lexical)
