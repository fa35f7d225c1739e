"""Query kinds and caption kinds: each declared once, with everything that depends on it.

A pair of Eq. 1 is a query kind (`q`, `qs`, `qd`, `qp`) and a caption kind (`Ca`, `Cq`).
A kind's class says where its texts live in the cache (`producer`, `texts`), whether it has
`m` variants, and which config fields its inputs depend on (`reads`). The pairings, the
substitution checks, the config hash and `prepare` all derive from these classes; a new
kind is one class and one decorator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from harness.cache.producers import (
    caption_producer,
    frame_filter_producer,
    paraphrase_producer,
    rewrite_producer,
    video_item,
    video_query_item,
)
from harness.cache.store import Entry, Producer
from harness.core.query import Query
from harness.core.registries import CAPTION_KINDS, QUERY_KINDS

Pair = tuple[str, str]


@dataclass(frozen=True)
class SourceSpec:
    """Which cached outputs a run reads: everything but the method's own parameters."""

    dataset: str
    captions: str
    caption_model: str | None
    frame_filter: str
    frame_filter_model: str | None
    rewriter: str
    rewriter_model: str
    instruction_pair: int
    embedder_models: tuple[str, ...]  # one, or the members of an ensemble (cosines averaged)
    lexical_model: str | None = None  # the lexical "embedder" a run fuses in, if any

    def __post_init__(self) -> None:
        # a bare model id would be read as one model per character
        if not isinstance(self.embedder_models, tuple) or not all(isinstance(m, str) for m in self.embedder_models):
            raise TypeError(f"SourceSpec.embedder_models must be a tuple of model ids, not {self.embedder_models!r}")

    @classmethod
    def from_config(cls, cfg: Any, embedder_models: tuple[str, ...], rewriter_model: str,
                    lexical_model: str | None = None) -> SourceSpec:
        return cls(
            cfg.dataset, cfg.captions, cfg.caption_model, cfg.frame_filter,
            cfg.frame_filter_model, cfg.rewriter, rewriter_model, cfg.instruction_pair,
            tuple(embedder_models), lexical_model,
        )

    def frame_filter_producer(self) -> Producer:
        return frame_filter_producer(self.frame_filter, self.frame_filter_model)


# -- query kinds ----------------------------------------------------------------------------
class QueryKind:
    """Where a query kind's texts live in the cache. `producer` None: no cached stage."""

    name: ClassVar[str] = ""
    variants: ClassVar[bool] = True  # m variants (False: the one query)
    reads: ClassVar[frozenset[str]] = frozenset()  # config fields its inputs depend on

    def producer(self, spec: SourceSpec) -> Producer | None:
        return None

    def texts(self, q: Query, entry: Entry | None) -> list[str]:
        raise NotImplementedError


@QUERY_KINDS.register("q")
class OriginalQuery(QueryKind):
    """The query as written (one variant)."""

    name = "q"
    variants = False

    def texts(self, q: Query, entry: Entry | None) -> list[str]:
        return [q.query]


class _RewriteKind(QueryKind):
    reads = frozenset({"rewriter", "rewriter_model", "instruction_pair"})

    def producer(self, spec: SourceSpec) -> Producer:
        return rewrite_producer(spec.rewriter, spec.rewriter_model, spec.instruction_pair)

    def texts(self, q: Query, entry: Entry | None) -> list[str]:
        assert entry is not None
        return list(entry.value[self.name])


@QUERY_KINDS.register("qs")
class SimplifiedQuery(_RewriteKind):
    """Simplified rewrites: core entities and actions only (m variants)."""

    name = "qs"


@QUERY_KINDS.register("qd")
class DetailedQuery(_RewriteKind):
    """Detailed rewrites: every detail kept or added (m variants)."""

    name = "qd"


@QUERY_KINDS.register("qp")
class Paraphrase(QueryKind):
    """Same-granularity paraphrases (VTG-GPT's Baichuan2 release, m variants)."""

    name = "qp"

    def producer(self, spec: SourceSpec) -> Producer:
        return paraphrase_producer()

    def texts(self, q: Query, entry: Entry | None) -> list[str]:
        assert entry is not None
        return list(entry.value["qp"])


# -- caption kinds ---------------------------------------------------------------------------
class CaptionKind:
    """Where a caption kind's texts live in the cache."""

    name: ClassVar[str] = ""
    per_query: ClassVar[bool] = False  # True: one entry per query (aware); False: per video
    reads: ClassVar[frozenset[str]] = frozenset()  # config fields its inputs depend on

    def producer(self, spec: SourceSpec) -> Producer:
        raise NotImplementedError

    def item(self, family: str, q: Query) -> dict[str, Any]:
        return video_query_item(family, q) if self.per_query else video_item(family, q.vid)


@CAPTION_KINDS.register("Ca")
class AgnosticCaptions(CaptionKind):
    """Query-agnostic captions, one per frame of the video."""

    name = "Ca"

    def producer(self, spec: SourceSpec) -> Producer:
        return caption_producer(spec.captions, "agnostic", spec.caption_model)


@CAPTION_KINDS.register("Cq")
class AwareCaptions(CaptionKind):
    """Query-aware captions of the query's candidate frames (top K% by the frame filter)."""

    name = "Cq"
    per_query = True
    reads = frozenset({"frame_filter", "frame_filter_model", "K", "cq_fallback"})

    def producer(self, spec: SourceSpec) -> Producer:
        return caption_producer(
            spec.captions, "aware", spec.caption_model, frame_filter=spec.frame_filter_producer()
        )


def query_kind_names() -> tuple[str, ...]:
    """The query kinds, in the order they were declared (q, qs, qd, qp)."""
    return tuple(QUERY_KINDS.in_order())


def caption_kind_names() -> tuple[str, ...]:
    """The caption kinds, in the order they were declared (Ca, Cq)."""
    return tuple(CAPTION_KINDS.in_order())


def pair_reads(pairs: tuple[Pair, ...]) -> frozenset[str]:
    """The config fields that the inputs of `pairs` depend on, beyond the dataset, caption
    backbone and embedder: the rewriter for `qs`/`qd`, the frame filter, K and the fallback
    for `Cq`, `m` for any kind with variants."""
    out: set[str] = set()
    for x, c in pairs:
        qk, ck = QUERY_KINDS.get(x), CAPTION_KINDS.get(c)
        out |= qk.reads | ck.reads
        if qk.variants:
            out.add("m")
    return frozenset(out)


def kind_fields() -> frozenset[str]:
    """Every config field some kind reads (and `m`): moot for a pairing without that kind."""
    out: set[str] = {"m"}
    for name in QUERY_KINDS.names():
        out |= QUERY_KINDS.get(name).reads
    for name in CAPTION_KINDS.names():
        out |= CAPTION_KINDS.get(name).reads
    return frozenset(out)
