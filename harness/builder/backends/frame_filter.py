"""Frame filters: sim(frame_i, q) for every frame, the ranking that picks candidate frames.

- `clip-vit-b32` (the paper's): CLIP through open_clip, cosine between the L2-normalised
  image embedding of each frame and the text embedding of the query. Model spec
  `ARCH[/PRETRAINED]`: ARCH an open_clip name (`ViT-B-32`) or a JSON model config file;
  PRETRAINED an open_clip tag (`openai`), a checkpoint file, or `none` (random weights,
  for tests). The cache key names it `open_clip:ARCH/PRETRAINED`.
- `caption-text`: a STAND-IN for caches without frame features (no videos, e.g. only the
  imported MiniGPT-v2 captions): the cosine between the query's sentence embedding and each
  frame's agnostic caption embedding, from the project's text embedder (`harness.embed`).
  It ranks frames by what a captioner said about them, not by what they show; everything
  it writes says so in its producer's model string and in each entry's meta.

Value per (video, query): `[float] * n_frames`, frame order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.builder.backends.base import FrameFilter, Frames, resolve_device, resolve_dtype
from harness.cache.embedders import build_embedder
from harness.cache.producers import FRAME_FILTER_MODELS, caption_producer
from harness.core.registries import FRAME_FILTERS

DEFAULT_CLIP_ARCH = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "openai"


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """`[open_clip:]ARCH[/PRETRAINED]` -> (arch, pretrained); pretrained `""` if not given.

    ARCH may be a JSON config path (split after `.json`); PRETRAINED may be a file path;
    `none` means random weights (returned as None).
    """
    s = spec.removeprefix("open_clip:")
    if ".json/" in s:
        i = s.index(".json/") + len(".json")
        arch, pre = s[:i], s[i + 1 :]
    elif s.endswith(".json") or "/" not in s:
        arch, pre = s, ""
    else:
        arch, pre = s.split("/", 1)
    return arch, None if pre.lower() in ("none", "random") else pre


def tag_quick_gelu(arch: str, pretrained: str | None) -> bool:
    """Whether the weights of an open_clip pretrained tag were trained with QuickGELU.

    OpenAI's CLIP (tag `openai`) uses QuickGELU, the `ViT-B-32` config plain GELU. open_clip
    2.x switched the activation for that tag by itself; 3.x only warns ("QuickGELU
    mismatch") and builds GELU, so every frame score would come from a mis-activated
    model. The tag's own record says which activation its weights need, and that is what
    the model is built with. A checkpoint file or no weights: the config decides.
    """
    if not pretrained:
        return False
    import open_clip  # lazy: heavy optional (open_clip)

    return bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))


@FRAME_FILTERS.register("clip-vit-b32")
class OpenCLIPFrameFilter(FrameFilter):
    """CLIP ViT-B/32 (open_clip) frame-query similarity; any open_clip model by spec."""

    name = "clip-vit-b32"
    needs_frames = True
    _held = ("_model", "_preprocess", "_tokenizer")

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: str | None = None,
        dtype: str | None = "float32",
        batch_size: int = 64,
        **_: Any,
    ) -> None:
        arch, pre = parse_clip_spec(model or DEFAULT_CLIP_ARCH)
        if pre == "":  # not in the spec: the keyword decides
            pre = pretrained
        self.arch = arch
        self.pretrained = pre if pre not in ("", "none", "random") else None
        self.model_id = f"open_clip:{arch}/{self.pretrained or 'none'}"
        self.device_name = device
        self.dtype_name = dtype
        self.batch_size = max(1, int(batch_size))
        self._model: Any = None
        self.device = ""

    def load(self) -> None:
        if self._model is not None:
            return
        import open_clip  # lazy: heavy optional (open_clip)

        self.device = resolve_device(self.device_name)
        name = self.arch
        if name.endswith(".json"):
            path = Path(name).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"open_clip model config {path} does not exist")
            open_clip.add_model_config(path)
            name = path.stem
        if self.pretrained and (Path(self.pretrained).suffix in (".pt", ".bin", ".safetensors", ".pth")):
            if not Path(self.pretrained).expanduser().is_file():
                raise FileNotFoundError(f"open_clip checkpoint {self.pretrained} does not exist")
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=self.pretrained, device=self.device,
            force_quick_gelu=tag_quick_gelu(name, self.pretrained),
        )
        dtype = resolve_dtype(self.dtype_name, self.device, prefer_half=False)
        self._model = model.to(dtype=dtype).eval()
        self._dtype = dtype
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(name)

    def score_video(self, frames: Frames, queries: Sequence[str]) -> list[list[float]]:
        """[query][frame] cosine similarities; the frames are embedded once per video."""
        import torch  # lazy: heavy optional (torch)

        self.load()
        with torch.inference_mode():
            feats = []
            images = frames.pil()
            for s in range(0, len(images), self.batch_size):
                x = torch.stack([self._preprocess(im) for im in images[s : s + self.batch_size]])
                f = self._model.encode_image(x.to(self.device, self._dtype))
                feats.append(torch.nn.functional.normalize(f.float(), dim=-1))
            img = torch.cat(feats)
            tok = self._tokenizer(list(queries)).to(self.device)
            txt = torch.nn.functional.normalize(self._model.encode_text(tok).float(), dim=-1)
            sims = (txt @ img.T).cpu().tolist()
        return [[float(v) for v in row] for row in sims]


@FRAME_FILTERS.register("caption-text")
class CaptionTextFrameFilter(FrameFilter):
    """STAND-IN: query-to-agnostic-caption cosine, for caches without frame features.

    `captions` names the caption backbone whose agnostic captions are compared (as in
    `harness.cache.backbones`, e.g. `minigptv2` for the imported set), `caption_model` its model id
    if not the preset's; `embedder` is a `harness.embed` embedder name or spec. Embeddings
    are read from / written to the cache under the embedder's model id, as runs do.
    """

    name = "caption-text"
    needs_frames = False
    label = FRAME_FILTER_MODELS["caption-text"]
    _held = ("_model", "_embedder")

    def __init__(
        self,
        captions: str = "minigptv2",
        caption_model: str | None = None,
        embedder: str | dict[str, Any] = "minilm",
        device: str | None = None,
        **_: Any,
    ) -> None:
        self.captions = captions
        self.caption_model = caption_model
        self.embedder_spec = embedder
        self.device_name = device
        self.model_id = self.label
        self._embedder: Any = None
        self._model: Any = None  # the loaded sentence model (None until `load`)

    def load(self) -> None:
        """Load the embedder's weights now (otherwise its first `encode` does)."""
        if self._model is None:
            self._model = self.embedder.load()
            self.device = str(getattr(self.embedder, "device", None) or "cpu")

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            dev = None if self.device_name in (None, "auto") else self.device_name
            self._embedder = build_embedder(self.embedder_spec, device=dev)
        return self._embedder

    def caption_source(self) -> Any:
        return caption_producer(self.captions, "agnostic", self.caption_model)

    def _matrix(self, cache: Any, texts: list[str]) -> Any:
        m = cache.get_embeddings(self.embedder.model_id, texts)
        if m is None:
            m = self.embedder.encode(texts)
            cache.put_embeddings(self.embedder.model_id, texts, m)
        return m

    def score_captions(self, cache: Any, captions: list[str], queries: Sequence[str]) -> list[list[float]]:
        """[query][frame] cosine between each query and each frame's caption."""
        self.load()
        cap = self._matrix(cache, list(captions))
        out = []
        for q in queries:
            qv = self._matrix(cache, [q])[0]
            out.append([float(v) for v in cap @ qv])
        return out

    def meta(self) -> dict[str, Any]:
        p = self.caption_source()
        return {
            "stand_in": "caption-text similarity, no frame features",
            "captions": f"{p.backend} / {p.model}",
            "caption_producer": p.digest,
            "embedder": self.embedder.model_id,
        }
