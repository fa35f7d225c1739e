"""Components beyond the paper, each off by default and each a computation of its own when
on: an embedder ensemble, the lemma-bag lexical score fused with the cosine, and temporal
smoothing. Hand-worked cases for each, and the promise that "off" is the paper's numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.cache.embedders import build_embedder, embed_dataset
from harness.cache.lexical import content_lemmas, lemma_bags, nlp
from harness.cache.store import Cache
from harness.config import ExperimentConfig, load_config
from harness.core.errors import ConfigError
from harness.core.query import Query
from harness.core.results import MissingInputs
from harness.data import load_dataset
from harness.method.kinds import SourceSpec
from harness.method.recipes import RECIPES, fused_sims
from harness.method.scoring import box_smoothing
from harness.method.sources import Prepared
from harness.runner.trial import InputPool, trial

REPO = Path(__file__).resolve().parents[1]
SPEC = SourceSpec("toy:val", "minigptv2", None, "clip-vit-b32", None, "hf-causal-lm", "m", 1, ("e",))


# -- temporal context -------------------------------------------------------------------------
def test_box_smoothing_by_hand() -> None:
    """window 1: each frame the mean of itself and its neighbours inside the video; a NaN
    frame (padding, or a missing score) is neither read nor filled."""
    scores = np.array([[[0.0, 0.0, 1.0, 0.0, 0.0, np.nan]]])
    got = box_smoothing(scores, 1)
    np.testing.assert_allclose(got[0, 0, :5], [0.0, 1 / 3, 1 / 3, 1 / 3, 0.0])
    assert np.isnan(got[0, 0, 5])
    wide = box_smoothing(np.array([[1.0, 2.0, 3.0, 4.0]]), 2)
    np.testing.assert_allclose(wide, [[2.0, 2.5, 2.5, 3.0]])  # (1+2+3)/3, (1..4)/4, (1..4)/4, (2+3+4)/3


def test_smoothing_reaches_the_curves_and_off_is_the_papers() -> None:
    sims = np.array([[[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    prep = Prepared("toy:val", (Query(0, "v0", "q", 16.0, ((0.0, 2.0),)),), np.array([8]),
                    {("q", "Ca"): sims}, None, "fp", SPEC)
    base = ExperimentConfig(dataset="toy:val", pairing="q-Ca", normalisation="raw")
    recipe = RECIPES.get("granalign")()
    (off,) = recipe.pair_scores(prep, base)
    (on,) = recipe.pair_scores(prep, base.replace(smooth="box", smooth_window=1))
    np.testing.assert_allclose(off, sims)
    np.testing.assert_allclose(on[0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0])
    assert base.replace(smooth="none", smooth_window=4).hash() == base.hash()  # off: its window is moot
    assert base.replace(smooth="box").hash() != base.hash()


# -- the lexical score --------------------------------------------------------------------------
def test_lemma_bags_share_content_lemmas() -> None:
    """"A man plays the guitar on the street" and "guitar player on a street": content
    lemmas {man, play, guitar, street} and {guitar, player, street}, 2 shared: cosine
    2 / sqrt(4 * 3) (Ochiai); no content word: a zero vector."""
    texts = ["A man plays the guitar on the street", "guitar player on a street", "the and of it"]
    lemmas = [content_lemmas(d) for d in nlp().pipe(texts)]
    assert lemmas[0] == {"man", "play", "guitar", "street"} and lemmas[1] == {"guitar", "player", "street"}
    v = build_embedder("lemmas").encode(texts)
    assert v[0] @ v[1] == pytest.approx(2 / np.sqrt(12), abs=1e-6)
    assert not v[2].any()
    np.testing.assert_allclose(lemma_bags([{"a", "b"}, {"a", "b"}]) @ lemma_bags([{"a", "b"}]).T, 1.0, rtol=1e-6)


def test_lexical_fusion_by_hand() -> None:
    """(1 - w) * cosine + w * lemma overlap, before the normalisation."""
    sem = np.array([[[0.2, 0.4, 0.6]]], dtype=np.float32)
    lex = np.array([[[1.0, 0.0, 0.5]]], dtype=np.float32)
    prep = Prepared("toy:val", (Query(0, "v0", "q", 6.0, ((0.0, 2.0),)),), np.array([3]),
                    {("q", "Ca"): sem}, None, "fp", SPEC, lexical={("q", "Ca"): lex})
    np.testing.assert_allclose(fused_sims(prep, ("q", "Ca"), 0.25), [[[0.4, 0.3, 0.575]]], rtol=1e-6)
    assert fused_sims(prep, ("q", "Ca"), 0.0) is sem
    without = Prepared("toy:val", prep.queries, prep.n_frames, prep.sims, None, "fp", SPEC)
    with pytest.raises(ValueError, match="lemma-bag"):
        fused_sims(without, ("q", "Ca"), 0.5)


# -- on the demo: ensembles and lexical fusion from the cache ---------------------------------------
@pytest.fixture(scope="module")
def demo_with_lemmas(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Cache:
    """The demo cache plus its lemma bags (a copy: the session's demo cache stays as it is)."""
    path = tmp_path_factory.mktemp("demo-lemmas") / "cache"
    shutil.copytree(demo_cache, path)
    cache = Cache(path)
    embed_dataset(cache, load_dataset("demo:val"), build_embedder("lemmas"), progress=False)
    return Cache(path, readonly=True)


def test_an_ensemble_averages_its_members_cosines(demo_with_lemmas: Cache) -> None:
    base = load_config(REPO / "experiments" / "demo.yaml", {"pairing": "q-Ca"})
    pool = InputPool(demo_with_lemmas)
    a = pool.get(base.replace(embedder="minilm")).sims[("q", "Ca")]
    b = pool.get(base.replace(embedder="lemmas")).sims[("q", "Ca")]
    both = pool.get(base.replace(embedder="minilm+lemmas")).sims[("q", "Ca")]
    np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-5, equal_nan=True)
    assert base.replace(embedder="minilm+lemmas").hash() != base.hash()
    with pytest.raises(ConfigError, match="an ensemble uses each member's own model"):
        base.replace(embedder="minilm+mpnet", embedder_model="/some/folder")
    with pytest.raises(ConfigError, match="not a registered embedder"):
        base.replace(embedder="minilm+nope")


def test_lexical_fusion_from_the_cache_and_off_is_the_papers(demo_with_lemmas: Cache, demo_cache: Path) -> None:
    base = load_config(REPO / "experiments" / "demo.yaml", {"pairing": "q-Ca"})
    pool = InputPool(demo_with_lemmas)
    fused = base.replace(lexical_weight=0.3)
    prep = pool.get(fused)
    assert prep.lexical is not None and ("q", "Ca") in prep.lexical
    assert trial(prep, fused)["brief"] != trial(pool.get(base), base)["brief"]
    # off: the same numbers, inputs and hash as before the component existed
    assert base.replace(lexical_weight=0.0, lexical_embedder="mpnet").hash() == base.hash()
    assert pool.get(base).lexical is None
    # on, without lemma bags in the cache: reported as missing, before anything is computed
    with pytest.raises(MissingInputs, match="lemma-bag"):
        InputPool(Cache(demo_cache, readonly=True)).get(fused)
