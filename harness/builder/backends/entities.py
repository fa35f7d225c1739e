"""Key entities and actions of a query: what the query-aware captioner is prompted with.

The paper guides aware captions with "key semantic elements extracted from the query"
(from "A person picking up a pencil from the desk": entities {person, pencil}, action
{picking up}). No tagger model can be downloaded here (spaCy/NLTK need their data), and the
queries are short, simple English, so this is a small rule-based extractor. How it works:

1. Tokenise: lower-case words (letters, digits, inner `'`/`-`); a possessive `'s` is cut
   and ends the phrase (`woman's dog` -> `woman`, `dog`); punctuation ends a phrase.
2. Tag each token, left to right:
   - FUNCTION: a closed list of determiners, pronouns, prepositions, conjunctions,
     auxiliaries (`is`, `are`, `has`, `can`...), numbers and common adverbs, plus any
     `-ly` word (adverb) except a few `-ly` nouns (`family`, `fly`...).
   - VERB: an `-ing` or `-ed` word (`picking`, `dressed`, irregular participles such as
     `taken`, `sat`, `held` from a small list), unless it sits right after a determiner or
     an adjective, where it is a modifier or a noun (`a running man`, `a crowded street`,
     `the building`); `a man running` is an action. A few `-ing`/`-ed` nouns (`thing`,
     `morning`, `ceiling`, `bed`...) never count.
     Also a word from a list of common base / 3rd-person verbs (`walks`, `opens`, `play`)
     when it follows a noun or pronoun (`the dog walks`, `kids play`) or `to` / a modal
     (`starts to dance`, `can jump`).
   - PARTICLE: `up`, `down`, `out`, `off`, `away`, `back`, `around`, `over`, `together`,
     `apart` right after a verb joins it (`picking up`, `takes off`, `turns around`).
   - everything else is CONTENT (nouns and their adjectives).
3. A maximal run of CONTENT tokens is a noun phrase; a phrase of adjectives only (colours,
   sizes, `happy`...) is dropped (`the car is red`). Phrases longer than three words keep
   their last three. Verbs (with their particle) are the actions.
4. Both lists keep first-seen order, without duplicates.

Limits, on purpose: a noun used as a verb outside the verb list, or a verb-list word used as
a noun after another noun (`the cooking show`), is mis-tagged; the prompt then carries one
extra or one missing word, which the captioner tolerates. The tagger is deterministic, so
the prompts (and cache keys' inputs) are reproducible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.core.registries import KEY_ELEMENT_EXTRACTORS

_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[.,;:!?()\"]")

FUNCTION_WORDS = frozenset(
    """
    a an the this that these those some any each every no all both either neither another other
    such own same several many much more most few little less least enough
    i me my mine myself you your yours yourself yourselves he him his himself she her hers
    herself it its itself we us our ours ourselves they them their theirs themselves
    who whom whose which what whoever whatever where when why how there here
    is are was were be been being am 's 're 've 'm 'd 'll
    has have had having do does did doing done can could will would shall should may might
    must ought wont cant dont doesnt didnt isnt arent wasnt werent
    and or but nor so yet if then than because while though although as until unless since
    whether also too very really just only even still again already almost quite rather
    about above across after against along amid among around at before behind below beneath
    beside besides between beyond by despite down during except for from in inside into like
    near of off on onto out outside over past per through throughout to toward towards under
    underneath unlike until up upon via with within without
    not never always often sometimes usually ever now later soon once twice together apart
    one two three four five six seven eight nine ten eleven twelve first second third last
    next lots lot bunch kind sort type way ways
    """.split()
)

PARTICLES = frozenset("up down out off away back around over together apart".split())
MODALS = frozenset("to can could will would shall should may might must".split())
DETERMINERS = frozenset(
    "a an the this that these those some any each every no my your his her its our their "
    "another several many few".split()
)

# -ing / -ed words that are (almost always) nouns
ING_ED_NOUNS = frozenset(
    """
    thing things something anything everything nothing morning mornings evening evenings ceiling
    ceilings clothing king kings ring rings string strings spring wedding weddings pudding
    sibling siblings duckling darling icing stuffing bed beds red shed sled hundred speed seed
    seeds feed weed weeds bread need steed
    """.split()
)
LY_NOUNS = frozenset(
    "family fly butterfly belly jelly lily ally rally bully assembly supply reply holy "
    "italy july".split()
)
IRREGULAR_PARTICIPLES = frozenset(
    """
    taken given eaten driven written ridden shown thrown drawn worn torn broken spoken chosen
    fallen beaten hidden bitten seen done gone sat stood held made put cut hit let set shut
    """.split()
)
# base forms; "+s" / "+es" / "y->ies" forms are derived
COMMON_VERBS = frozenset(
    """
    walk talk run sit stand eat drink hold open close take put look play cook show speak get
    give make go come pour cut throw catch kick hit jump dance sing swim climb ride drive push
    pull carry wash clean brush read write draw paint laugh smile cry hug kiss wave point touch
    watch fix build pick lift drop turn move shake stir mix fry bake chop slice peel fill
    wear try use explain describe discuss demonstrate film record travel visit enter leave
    arrive exit sleep wake lie lay rest work type sweep mop fold tie hang place grab reach
    answer call hear listen tell say ask buy sell pay hand serve feed bite chew swallow taste
    smell sniff dress undress sneeze cough wipe dry hold rub apply spray tap knock ring
    pass cross chase follow meet fight win lose check shoot fly flip roll spin toss drag
    enjoy prepare unbox review try sit hike surf ski skate fish row paddle splash
    """.split()
)
ADJECTIVES = frozenset(
    """
    red orange yellow green blue purple pink brown black white gray grey gold golden silver
    dark light bright big small large tiny huge little long short tall high low old new young
    happy sad angry funny cute beautiful pretty nice good bad great best favorite favourite
    hot cold warm cool wet dry full empty busy quiet loud fast slow clean dirty
    """.split()
)


def _verb_forms(base: str) -> set[str]:
    forms = {base, base + "s", base + "es"}
    if base.endswith("y") and base[-2:-1] not in "aeiou":
        forms.add(base[:-1] + "ies")
    return forms


VERB_FORMS = frozenset(f for v in COMMON_VERBS for f in _verb_forms(v))


@dataclass(frozen=True)
class KeyElements:
    """A query's key entities (noun phrases) and actions (verbs with their particle)."""

    entities: tuple[str, ...]
    actions: tuple[str, ...]

    def prompt_fields(self, query: str) -> dict[str, str]:
        """`{entities}` / `{actions}` for a prompt template.

        An empty list would leave the captioner a prompt with a hole; the query itself
        (entities) or "what is happening" (actions) stands in, so the prompt still carries
        the query's intent.
        """
        return {
            "entities": ", ".join(self.entities) or query.strip().rstrip("."),
            "actions": ", ".join(self.actions) or "what is happening",
        }


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'")
    out: list[str] = []
    for tok in _WORD.findall(text):
        if tok.endswith("'s"):  # possessive: "woman's" -> woman + phrase break
            out.extend([tok[:-2], ","])
        else:
            out.append(tok)
    return out


def _is_function(tok: str) -> bool:
    if tok in FUNCTION_WORDS:
        return True
    if tok.endswith("ly") and len(tok) > 4 and tok not in LY_NOUNS:
        return True
    return tok.isdigit()


def _participle(tok: str) -> bool:
    if tok in ING_ED_NOUNS:
        return False
    if tok in IRREGULAR_PARTICIPLES:
        return True
    return (tok.endswith("ing") and len(tok) > 4) or (tok.endswith("ed") and len(tok) > 4)




@KEY_ELEMENT_EXTRACTORS.register("rules")
def extract_key_elements(query: str) -> KeyElements:
    """Entities and actions of one query (see the module docstring for the rules).

    >>> extract_key_elements("A person picking up a pencil from the desk")
    KeyElements(entities=('person', 'pencil', 'desk'), actions=('picking up',))
    """
    toks = _tokens(query)
    tags: list[str] = []  # "F" function/punct, "V" verb, "P" particle, "C" content
    for i, tok in enumerate(toks):
        prev = toks[i - 1] if i > 0 else ""
        prev_tag = tags[i - 1] if i > 0 else "F"
        if not tok[0].isalnum():
            tags.append("F")
            continue
        if prev_tag == "V" and tok in PARTICLES:
            tags.append("P")
            continue
        if _is_function(tok):
            tags.append("F")
            continue
        after_modifier_slot = prev in DETERMINERS or (prev_tag == "C" and prev in ADJECTIVES)
        if _participle(tok):
            # "a running man", "the crowded street": a modifier inside a noun phrase;
            # "the building": a noun. Otherwise an action.
            if after_modifier_slot:
                tags.append("C")
            else:
                tags.append("V")
            continue
        if tok in VERB_FORMS and (
            prev in MODALS
            or prev_tag == "C"
            or prev in {"he", "she", "it", "they", "we", "i", "you", "who", "someone", "people"}
        ):
            tags.append("V")
            continue
        tags.append("C")

    entities: list[str] = []
    actions: list[str] = []
    i = 0
    while i < len(toks):
        tag = tags[i]
        if tag == "V":
            phrase = toks[i]
            if i + 1 < len(toks) and tags[i + 1] == "P":
                phrase += " " + toks[i + 1]
                i += 1
            if phrase not in actions:
                actions.append(phrase)
            i += 1
        elif tag == "C":
            j = i
            while j < len(toks) and tags[j] == "C":
                j += 1
            words = toks[i:j]
            if not all(w in ADJECTIVES for w in words):
                phrase = " ".join(words[-3:])
                if phrase not in entities:
                    entities.append(phrase)
            i = j
        else:
            i += 1
    return KeyElements(tuple(entities), tuple(actions))
