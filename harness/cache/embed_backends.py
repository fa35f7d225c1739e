"""Faster CPU backends for the sentence embedders: ONNX Runtime and OpenVINO, fp32 and int8.

Why: embedding a QVHighlights split (about 114k distinct texts) is most of a cold `make
ablation-table3`, and PyTorch runs MiniLM at about 180 texts/s on 2 cores. The same
SentenceTransformer (transformer + pooling) is exported once, with the libraries' own
tools, into the user's model cache (`models_dir()`, next to the assembled mpnet), and read
back by a runtime that needs neither torch nor sentence-transformers:

- `onnx`: `torch.onnx.export` of the model, run by ONNX Runtime (same float32 arithmetic);
- `onnx-int8`: that graph through ONNX Runtime's dynamic quantiser (`quantize_dynamic`,
  int8 weights per channel, activations quantised at run time), no calibration data;
- `openvino`: the ONNX graph converted by OpenVINO (`convert_model`, float32 weights and
  an f32 precision hint, so no bf16 on CPUs that offer it);
- `openvino-int8`: NNCF's static int8 quantisation of that model (`nncf.quantize`,
  transformer preset), calibrated on the synthetic demo world's texts (`calibration_texts`:
  shipped with the harness, deterministic, no data root needed).

sentence-transformers' `backend="onnx"|"openvino"` and its export helpers do these same
steps through optimum-onnx / optimum-intel, whose releases cap transformers (< 4.58 and
< 5.6) below the 5.x the harness runs on, so pip cannot install them together; the steps
are called on the libraries underneath instead.

An int8 export is checked against the float32 model it came from on the calibration texts
and refused when their vectors agree at a mean cosine below `INT8_MIN_MEAN_COSINE`: on this
2-core AVX2 CPU (no VNNI) ONNX Runtime's dynamic int8 of all-mpnet-base-v2 gives vectors
unrelated to the model's (mean cosine 0.02 to float32 on 1000 val texts) and NNCF's static
int8 0.945, while MiniLM's keep 0.99. The agreement is written into the export's META.

Each backend is part of the embedder's model id (`...#onnx-int8`, `embedder_model_id`), so
matrices of different backends never mix in the cache. If an export recipe changes in a
way that changes its numbers, the backend gets a new name. Batches are bucketed by token
length (each batch padded to its own longest text) and runtimes use every core this
process may run on (`cpu_threads`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache.model_assets import build_folder_once, models_dir
from harness.core.errors import HarnessError
from harness.core.provenance import installed_versions
from harness.data import demo

TORCH = "torch"
BACKENDS = (TORCH, "onnx", "onnx-int8", "openvino", "openvino-int8")
# import name -> PyPI distribution, per backend (onnx and onnxruntime are dependencies of the
# harness; the `fast-embed` extra adds openvino and nncf)
BACKEND_PACKAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "onnx": (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    "onnx-int8": (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    "openvino": (("onnx", "onnx"), ("openvino", "openvino")),
    "openvino-int8": (("onnx", "onnx"), ("openvino", "openvino"), ("nncf", "nncf")),
}
OPSET = 17
CALIBRATION_SIZE = 300  # NNCF's and optimum-intel's default number of calibration samples
META = "granalign-export.json"
INT8_MIN_MEAN_COSINE = 0.98  # an int8 export further from float32 than this is refused


class BackendUnavailable(HarnessError):
    """A backend whose Python packages are not installed (one line: what to install)."""


class ExportRejected(HarnessError):
    """An int8 export whose vectors are not the model's any more (one line: the figures)."""


def check_backend(backend: str) -> None:
    """Raise a one-line error for an unknown backend or one whose packages are missing."""
    if backend not in BACKENDS:
        raise ValueError(f"embedder backend {backend!r} is not one of {', '.join(BACKENDS)}")
    missing = [dist for mod, dist in BACKEND_PACKAGES.get(backend, ()) if importlib.util.find_spec(mod) is None]
    if missing:
        raise BackendUnavailable(
            f"embedder backend {backend!r} needs {', '.join(missing)}: pip install {' '.join(missing)} "
            "(pip install 'granalign-harness[fast-embed]' has every backend's), or use --backend torch")


def backend_suffix(backend: str) -> str:
    """What the backend adds to a model id (`#onnx-int8`); nothing for torch."""
    if backend not in BACKENDS:
        raise ValueError(f"embedder backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return "" if backend == TORCH else f"#{backend}"


def cpu_threads() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def export_folder(base_model_id: str, backend: str) -> Path:
    """Where `backend`'s export of the model named `base_model_id` lives in the model cache."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base_model_id.split("/")[-1]).strip("-")[:60] or "model"
    digest = hashlib.sha256(base_model_id.encode("utf-8")).hexdigest()[:12]
    return models_dir() / "embedders" / f"{name}-{digest}" / backend


@lru_cache(maxsize=1)
def calibration_texts() -> tuple[str, ...]:
    """`CALIBRATION_SIZE` caption- and query-like texts for static int8: the demo world's.

    Synthetic and shipped with the harness, so the quantised model is the same on every
    machine whatever its data root holds, and no benchmark text calibrates its own model.
    """

    rng = np.random.default_rng(demo.SEED + 2)
    videos, queries = demo.demo_world()
    texts: list[str] = []
    for dq in queries:
        texts.append(dq.query.query)
        texts.extend(demo.paraphrases(dq, rng))
        for lists in demo.rewrites(dq, 1, rng).values():
            texts.extend(lists)
    for v in videos:
        for style in ("full", "short"):
            texts.extend(demo.agnostic_caption(v.scene_at(i), i, rng, style) for i in range(v.n_frames))
    unique = sorted(set(texts))
    pick = np.random.default_rng(demo.SEED + 3).permutation(len(unique))[:CALIBRATION_SIZE]
    return tuple(unique[i] for i in sorted(pick))


# -- export ---------------------------------------------------------------------------------
def ensure_export(backend: str, base_model_id: str, load_st: Callable[[], Any]) -> Path:
    """The exported model folder, made on first use (atomically) and reused afterwards.

    `load_st` loads the float32 SentenceTransformer; it is called only when the folder
    must be made, so a machine that has the export never imports torch for it.
    """
    check_backend(backend)
    if backend == TORCH:
        raise ValueError("the torch backend has nothing to export")
    target = export_folder(base_model_id, backend)
    recipe: dict[str, Any] = {"model": base_model_id, "backend": backend, "opset": OPSET}
    if backend.endswith("int8"):
        recipe["min_mean_cosine"] = INT8_MIN_MEAN_COSINE  # exports made before the check are checked
    stamp = json.dumps(recipe, sort_keys=True)
    return build_folder_once(target, stamp, lambda tmp: _export(backend, base_model_id, load_st(), tmp))


def _export(backend: str, base_model_id: str, st: Any, out: Path) -> None:
    """Write `backend`'s model, the tokenizer and `META` into the empty folder `out`."""
    import torch  # lazy: heavy optional (torch), only to make an export

    tok = st.tokenizer
    max_len = int(st.max_seq_length)
    from tokenizers import Tokenizer  # lazy: loaded with the model, not at import

    # a copy of the `tokenizers` object the fast tokenizer wraps, set as the runtime uses it
    fast = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    fast.enable_truncation(max_length=max_len)
    fast.no_padding()  # batches are padded when they are made (to their own longest text)
    fast.save(str(out / "tokenizer.json"))
    inputs = ["input_ids", "attention_mask"]

    class Pooled(torch.nn.Module):
        """Token ids -> sentence embedding: every module of the SentenceTransformer."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

    probe = tok(["a probe sentence", "another one"], padding=True, return_tensors="pt")
    onnx_path = out / "model.onnx"
    st = st.to("cpu").float().eval()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on traced branches
        torch.onnx.export(
            Pooled(st), (probe["input_ids"], probe["attention_mask"]), str(onnx_path),
            dynamo=False, input_names=inputs, output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "sentence_embedding": {0: "batch"}},
            opset_version=OPSET,
        )
    files = ["model.onnx"]
    if backend == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: heavy optional

        quantize_dynamic(str(onnx_path), str(out / "model_int8.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul"])
        onnx_path.unlink()
        files = ["model_int8.onnx"]
    elif backend.startswith("openvino"):
        import openvino as ov  # lazy: optional (fast-embed extra)

        model = ov.convert_model(str(onnx_path))
        if backend == "openvino-int8":
            import nncf  # lazy: optional (fast-embed extra), heavy (scipy, sklearn)

            texts = calibration_texts()
            batches = [_pad([fast.encode(text)], int(tok.pad_token_id or 0)) for text in texts]
            model = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(texts))
        ov.save_model(model, str(out / "openvino_model.xml"), compress_to_fp16=False)
        onnx_path.unlink()
        files = ["openvino_model.xml", "openvino_model.bin"]
    dists = {"onnx": ("torch", "onnx", "onnxruntime"), "onnx-int8": ("torch", "onnx", "onnxruntime"),
             "openvino": ("torch", "onnx", "openvino"),
             "openvino-int8": ("torch", "onnx", "openvino", "nncf")}[backend]
    meta = {"model": base_model_id, "backend": backend, "max_seq_length": max_len,
            "pad_token_id": int(tok.pad_token_id or 0), "inputs": inputs, "files": files,
            "dimension": int(st.encode(["x"]).shape[1]), "opset": OPSET,
            "exported_with": installed_versions(*dists)}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if backend.endswith("int8"):
        meta["agreement_with_float32"] = agreement = _agreement(st, out, backend)
        (out / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if agreement["cos_mean"] < INT8_MIN_MEAN_COSINE:
            raise ExportRejected(
                f"the {backend} export of {base_model_id} is not the model any more: its vectors agree with "
                f"float32's at a mean cosine of {agreement['cos_mean']:.3f} (min {agreement['cos_min']:.3f}) "
                f"on {agreement['texts']} calibration texts, below {INT8_MIN_MEAN_COSINE}; use a float32 "
                "backend (onnx, openvino or torch)")


def _agreement(st: Any, folder: Path, backend: str) -> dict[str, Any]:
    """Min and mean cosine between the export's vectors and the float32 model's on the
    calibration texts."""
    texts = list(calibration_texts())
    ref = np.asarray(st.encode(texts, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)
    got = ExportedEncoder(folder, backend).encode(texts)
    cos = np.sum(got * ref, axis=1) / np.maximum(np.linalg.norm(got, axis=1), 1e-12)
    return {"texts": len(texts), "cos_min": round(float(cos.min()), 5), "cos_mean": round(float(cos.mean()), 5)}


def _pad(encodings: Sequence[Any], pad_id: int) -> dict[str, np.ndarray]:
    """One batch as int64 arrays padded to its longest text (attention mask 0 on padding)."""
    n = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), n), dtype=np.int64)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# -- run ------------------------------------------------------------------------------------
class ExportedEncoder:
    """Encodes with an exported backend: tokenizer + ONNX Runtime or OpenVINO, no torch.

    Texts are tokenised once, sorted by token count and cut into batches of `batch_size`,
    each padded only to its own longest text (length buckets), and the rows are returned
    in the order given.
    """

    def __init__(self, folder: Path, backend: str, batch_size: int = 64, threads: int | None = None) -> None:
        check_backend(backend)
        from tokenizers import Tokenizer  # lazy: loaded with the model, not at import

        self.folder = folder
        self.backend = backend
        self.batch_size = int(batch_size)
        self.threads = threads or cpu_threads()
        self.meta = json.loads((folder / META).read_text(encoding="utf-8"))
        self.dimension = int(self.meta["dimension"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(self.meta["max_seq_length"]))
        self.tokenizer.no_padding()
        self._run = self._ort() if backend.startswith("onnx") else self._openvino()

    def _ort(self) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import onnxruntime as ort  # lazy: heavy optional (ONNX Runtime)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(self.folder / self.meta["files"][0]), opts,
                                    providers=["CPUExecutionProvider"])
        return lambda feed: sess.run(None, feed)[0]

    def _openvino(self) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import openvino as ov  # lazy: optional (fast-embed extra)

        compiled = ov.Core().compile_model(
            str(self.folder / "openvino_model.xml"), "CPU",
            {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32",
             "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        return lambda feed: np.array(request.infer(feed)[0], copy=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 `(len(texts), dimension)`, not normalised (the embedder normalises)."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        pad_id = int(self.meta["pad_token_id"])
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            out[idx] = self._run(_pad([encodings[i] for i in idx], pad_id))
        return out
