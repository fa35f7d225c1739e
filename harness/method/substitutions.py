"""Declared substitutions: a named stand-in for an input kind the cache cannot feed.

`Cq=Ca` reads "aware captions are replaced by agnostic ones". A substitution is given on
the command line (`--substitute Cq=Ca`), never implied; it applies only to a config whose
inputs are missing, rewriting its pairing (`qs-Cq + qd-Ca` becomes `qs-Ca + qd-Ca`, pairs
made equal are kept once). Whatever is computed that way is marked, and a substituted
config equal to another one is the same computation, reported as such (METHOD.md,
"Offline stand-ins").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.core.errors import ConfigError
from harness.method.kinds import Pair, caption_kind_names, query_kind_names

# why a stand-in is needed offline, shown in table titles
REASONS = {
    ("Cq", "Ca"): "aware captions replaced by agnostic ones: no query-aware captioner runs offline",
    ("qs", "q"): "simplified rewrites replaced by the query: no rewriter",
    ("qd", "q"): "detailed rewrites replaced by the query: no rewriter",
    ("qs", "qp"): "simplified rewrites replaced by paraphrases: no rewriter",
    ("qd", "qp"): "detailed rewrites replaced by paraphrases: no rewriter",
}


@dataclass(frozen=True)
class Substitution:
    """`source` kind read as `target` kind (both query kinds or both caption kinds)."""

    source: str
    target: str

    @classmethod
    def parse(cls, text: str) -> Substitution:
        source, sep, target = text.partition("=")
        source, target = source.strip(), target.strip()
        kinds = (query_kind_names(), caption_kind_names())
        if not sep or not any(source in k and target in k for k in kinds) or source == target:
            raise ConfigError(
                f"substitution {text!r} should be KIND=KIND, two different query kinds "
                f"({', '.join(kinds[0])}) or caption kinds ({', '.join(kinds[1])}), e.g. Cq=Ca")
        return cls(source, target)

    @property
    def reason(self) -> str:
        return REASONS.get((self.source, self.target), f"{self.source} replaced by {self.target}")

    def __str__(self) -> str:
        return f"{self.source}={self.target}"


def parse_substitutions(texts: Iterable[str]) -> tuple[Substitution, ...]:
    subs = tuple(Substitution.parse(t) for t in texts)
    sources = [s.source for s in subs]
    if len(set(sources)) != len(sources):
        raise ConfigError(f"substitutions {', '.join(map(str, subs))}: a kind is substituted twice")
    return subs


def substitute_pairs(pairs: Sequence[Pair], subs: Sequence[Substitution]) -> tuple[Pair, ...]:
    """The pairs with every substituted kind replaced; pairs made equal kept once, in order."""
    table = {s.source: s.target for s in subs}
    out = [(table.get(x, x), table.get(c, c)) for x, c in pairs]
    return tuple(dict.fromkeys(out))


def label(subs: Sequence[Substitution]) -> str:
    """`Cq=Ca, qs=q`: the value of the runs' `granalign.substitutions` tag."""
    return ", ".join(map(str, subs))
