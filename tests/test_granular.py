"""The offline granular rewriter (spaCy rules), checked on real QVHighlights val queries.

Each expected simplified query below was worked out by hand from the rules (keep the root,
its subject, objects and the prepositional phrases of verbs; drop adjectives, bare adverbs,
relative / adverbial / participial clauses and prepositional details on nouns; mend the
articles) and checked to be a grammatical phrase that keeps the core entities and actions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.builder.backends import granular
from harness.builder.backends.granular import (
    RULES_VERSION,
    Parses,
    SpacyGranularRewriter,
    has_proper_noun,
    nlp,
    pipeline_id,
    proper_nouns,
    simplify,
    spacy_key_elements,
)
from harness.cache.producers import paraphrase_producer, query_text_item, rewrite_producer
from harness.cache.store import Cache
from harness.core.registries import REWRITERS
from harness.report.plots import capitalised_word, query_type, query_types

HAND_WORKED = [
    # adjectives and bare adverbs out
    ("Woman holds up a green bottle.", "Woman holds up a bottle"),
    ("Man walks away from white van.", "Man walks away from van"),
    ("Chefs cook the onions alone in a pot.", "Chefs cook the onions in a pot"),
    ("Man and woman are wearing black jackets outside.", "Man and woman are wearing jackets"),
    ("Some girls talk under a yellow canopy", "Some girls talk under a canopy"),
    ("Jockey rides a black horse around a stable.", "Jockey rides a horse around a stable"),
    ("Woman puts items into plastic bags.", "Woman puts items into bags"),
    # prepositional details on nouns out; `of` phrases (the entity itself) stay
    ("Woman in plaid shirt sits still by a red couch.", "Woman sits by a couch"),
    ("Man with curly hair speaks directly to camera.", "Man speaks to camera"),
    ("Man in a black suit escorts a woman to a doorway.", "Man escorts a woman to a doorway"),
    ("Woman in a black coat grooms a horse", "Woman grooms a horse"),
    ("A woman in sunglasses takes a boat ride on a pirate ship", "A woman takes a boat ride on a pirate ship"),
    ("Woman in parked car holds up a blue water bottle", "Woman holds up a water bottle"),
    ("Man in black shirt speaks in front of a tree at night.", "Man speaks in front of a tree at night"),
    ("A guy with grey top is showing a box filled with rubbish.", "A guy is showing a box"),
    ("Vlogger goes on a tour of the pier.", "Vlogger goes on a tour of the pier"),
    ("Man reads a piece of paper to his kid.", "Man reads a piece of paper to his kid"),
    ("A group of people pose for group photos.", "A group of people pose for group photos"),
    # relative, adverbial and participial clauses out
    ("Man talks to the camera while fiddling with his mask.", "Man talks to the camera"),
    ("A team of doctors is pulling a patient who is laying on a gurney.", "A team of doctors is pulling a patient"),
    ("Man turns the machine to make spaghetti.", "Man turns the machine"),
    ("Two girls are comparing the shoes they are wearing together.", "Two girls are comparing the shoes"),
    ("A man wearing a mask is outside of a business.", "A man is outside of a business"),
    ("A historical looking city located on an island is coming into view.", "A city is coming into view"),
    ("The woman is sitting on the olive green yoga mat with her dog while speaking about yoga.",
     "The woman is sitting on the yoga mat with her dog"),
    # articles mended, possessives kept, particles kept, conjunctions without a partner out
    ("An Asian woman wearing a Boston t-shirt is in her home talking.", "A woman is in her home talking"),
    ("A man is showing his brown jeep with a white logo on it.", "A man is showing his jeep"),
    ("Chef makes pizza and cuts it up.", "Chef makes pizza and cuts it up"),
    ("A man in black clothes and wearing a beige hat is talking in front of the camera",
     "A man is talking in front of the camera"),
    ("Little american girl playing with her toys", "Girl playing with her toys"),
    # a noun phrase without a finite verb keeps its participle: it is the action
    ("A woman sitting in front of a desk wearing headphones and using her laptop",
     "A woman sitting in front of a desk"),
    ("A woman in a black dress giving a tour of her hotel room.", "A woman giving a tour of her hotel room"),
    # headline style: the verb tagged as a plural noun is found by a re-parse
    ("Man in gray top walks from outside to inside.", "Man walks from outside to inside"),
    ("Man in blue top vlogs in a parked car.", "Man vlogs in a car"),
    ("Blonde girl talks in her car parked in a lot.", "Girl talks in her car"),
]


@pytest.mark.parametrize(("query", "expected"), HAND_WORKED)
def test_simplified_query_on_hand_worked_real_queries(query: str, expected: str, data_root: Path) -> None:
    real = {json.loads(line)["query"] for line in
            (data_root / "qvhighlights" / "highlight_val_release.jsonl").open(encoding="utf-8")}
    assert query in real, "every case is a real QVHighlights val query"
    assert simplify(query) == expected


def test_the_detailed_query_keeps_every_detail_and_paraphrases_give_more_variants(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    q = "Woman in plaid shirt sits still by a red couch."
    para = ["A lady in a plaid shirt sits by a red sofa.", "A woman wearing plaid sits near a red couch.",
            "By a red couch, a woman in a plaid shirt sits.", "A woman sits quietly next to a red couch.",
            "There is a woman in plaid sitting by the red couch."]
    cache.put(paraphrase_producer(), query_text_item(q), {"qp": para})
    (one,) = SpacyGranularRewriter(m=1).rewrite([q], 1)
    assert one.status == "ok" and one.value == {"qs": ["Woman sits by a couch"], "qd": [q]}
    (three,) = SpacyGranularRewriter(m=3).rewrite([q], 1, cache=cache)
    assert three.value["qd"] == [q, para[0], para[1]]
    assert three.value["qs"] == [simplify(q), simplify(para[0]), simplify(para[1])]
    assert three.meta["sources"] == ["query", "qp_1", "qp_2"]
    (failed,) = SpacyGranularRewriter(m=3).rewrite(["a query without paraphrases"], 1, cache=cache)
    assert failed.status == "failed" and "cached paraphrases" in failed.meta["error"]


def test_the_rewriter_is_registered_and_keyed_by_pipeline_and_rules() -> None:
    assert REWRITERS.get("spacy-granular") is SpacyGranularRewriter
    model = pipeline_id()
    assert model.startswith("spacy/en_core_web_sm-3.8") and model.endswith(f"granular-rules-{RULES_VERSION}")
    assert SpacyGranularRewriter.default_model_id() == model
    spacy_key = rewrite_producer("spacy-granular", model, 1).digest
    assert spacy_key != rewrite_producer().digest  # never mixed with LLM rewrites


def test_the_key_names_the_loaded_pipelines_version_without_importing_spacy() -> None:
    """The version in the key is read from the package's meta.json (no spaCy import, so a
    warm `cache build --stages variants` skips seconds of start-up); it is the version of the
    pipeline that makes the rewrites."""
    code = ("import sys\nfrom harness.builder.backends.granular import pipeline_id\n"
            "print(pipeline_id(), 'spacy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [pipeline_id(), "False"]
    assert pipeline_id() == f"spacy/en_core_web_sm-{nlp().meta['version']}+granular-rules-{RULES_VERSION}"


def test_key_elements_and_proper_nouns_from_the_same_pipeline() -> None:
    k = spacy_key_elements("A person picking up a pencil from the desk")
    assert k.entities == ("person", "pencil", "desk") and k.actions == ("picking up",)
    headline = spacy_key_elements("Man in gray top walks from outside to inside.")
    assert headline.entities == ("man",) and headline.actions == ("walks",)
    assert has_proper_noun("A tourist couple get the mango smoothie ball at the Bricklin Cafe in Penang, Malaysia")
    assert not has_proper_noun("Man in gray top walks from outside to inside.")
    # the word-shape rule stays available: it takes "Asian" for a proper noun, spaCy's parse too
    assert capitalised_word("An Asian woman eating french fries") is True
    assert query_type("Chef makes pizza and cuts it up.") == "Else"
    assert query_type("Woman holds up a green bottle.") == "Simple"
    assert query_type("A woman goes to the 360 Chicago observation deck cafe on the 94th floor") == "Detail"


def _val_queries(data_root: Path, n: int) -> list[str]:
    with (data_root / "qvhighlights" / "highlight_val_release.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["query"] for line, _ in zip(f, range(n), strict=False)]


class _CountingNlp:
    """spaCy's pipeline, counting batch parses and one-text parses."""

    def __init__(self) -> None:
        self.real, self.pipes, self.calls = nlp(), 0, 0

    def pipe(self, texts: Any, **kwargs: Any) -> Any:
        self.pipes += 1
        return self.real.pipe(texts, **kwargs)

    def __call__(self, text: str) -> Any:
        self.calls += 1
        return self.real(text)


def _parse_of(doc: Any) -> list[tuple[str, str, str, str, int]]:
    return [(t.text, t.tag_, t.pos_, t.dep_, t.head.i) for t in doc]


def test_batched_parses_are_the_parses_of_one_call_a_text(data_root: Path) -> None:
    """The batch (entity recogniser and lemmatiser left out) tags and parses every text as
    the whole pipeline does on that text alone: 300 real val queries, the hand-worked
    ones, and the verb probes of those parsed without a verb."""
    texts = list(dict.fromkeys(_val_queries(data_root, 300) + [q for q, _ in HAND_WORKED]))
    parses = Parses(texts)
    probes = [p for t in texts if not granular._verb_root(parses(t)) for _, p in granular._verb_candidates(parses(t))]
    assert len(probes) > 20, "the headline-style queries give verb probes"
    for text in texts + probes:
        assert _parse_of(parses(text)) == _parse_of(nlp()(text)), text


def test_the_rewriter_parses_in_two_batches_and_rewrites_as_one_text_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    queries = [q for q, _ in HAND_WORKED]
    alone = [simplify(q) for q in queries]  # each query parsed on its own
    counting = _CountingNlp()
    monkeypatch.setattr(granular, "nlp", lambda: counting)
    results = SpacyGranularRewriter(m=1).rewrite(queries, 1)
    assert [r.value["qs"] for r in results] == [[a] for a in alone]
    assert (counting.pipes, counting.calls) == (2, 0), "the queries, then the verb probes: a batch each"


def test_query_types_of_a_split_parse_once_a_process(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table's every row asks for the same queries' types (Fig. 7): one spaCy batch for
    the first, none for the rest, and the same types as the one-query rule."""
    queries = _val_queries(data_root, 200) + ["A tourist couple get the mango smoothie ball at the Bricklin Cafe"]
    monkeypatch.setattr(granular, "_PROPER_NOUN", {})
    counting = _CountingNlp()
    monkeypatch.setattr(granular, "nlp", lambda: counting)
    types = query_types(queries)
    assert (counting.pipes, counting.calls) == (1, 0)
    assert query_types(queries) == types and (counting.pipes, counting.calls) == (1, 0)
    monkeypatch.setattr(granular, "nlp", nlp)

    def alone(q: str) -> bool:  # the rule on the whole pipeline's parse of the query by itself
        doc = nlp()(q)
        return any(e.label_ in granular.NAMED for e in doc.ents) or any(t.pos_ == "PROPN" and t.i > 0 for t in doc)

    assert types == [query_type(q, proper_noun=alone) for q in queries]
    assert {"Simple", "Detail", "Else"} <= set(types) and types[-1] == "Detail"
    assert proper_nouns(queries[-1:]) == [True]
