"""What every model backend is: the four registries, their base classes, shared helpers.

The cache builder (`harness/builder.py`) picks a backend per stage by name from one of the
registries below and builds it from config (`REGISTRY.build({"type": name, **kwargs})`),
so adding a backend is one class and one decorator. Heavy libraries (torch, transformers,
open_clip, decord, av) are imported inside methods: importing this package costs nothing,
and a build that finds everything cached never loads a model.
"""

from __future__ import annotations

import gc
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.core.constants import FPS, K_MAX

if TYPE_CHECKING:
    from PIL import Image


class VideoError(RuntimeError):
    """A video that is missing or cannot be decoded. The message names the id and the file."""

    def __init__(self, vid: str, reason: str, path: str | None = None) -> None:
        self.vid = vid
        self.reason = reason
        self.path = path
        where = f" ({path})" if path else ""
        super().__init__(f"video {vid}{where}: {reason}")


@dataclass
class Frames:
    """The frames of one video at `fps`: frame i stands for the clip [i/fps, (i+1)/fps).

    `images` are RGB uint8 arrays (H, W, 3). `timestamps[i]` is the time (s) at which frame
    i was taken; `clamped` counts frames whose time lay past the decodable end of the video
    (they repeat the last decodable frame).
    """

    vid: str
    images: list[np.ndarray]
    timestamps: list[float]
    video_duration: float
    decoder: str
    source: str = ""
    clamped: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def pil(self, indices: Sequence[int] | None = None) -> list[Image.Image]:
        from PIL import Image  # lazy: image library, needed only with frames (Pillow)

        idx = range(len(self.images)) if indices is None else indices
        return [Image.fromarray(self.images[i]) for i in idx]


def frame_times(n_frames: int, video_duration: float, fps: float = FPS) -> list[float]:
    """When frame i is taken: the middle of its clip [i/fps, (i+1)/fps).

    At 0.5 fps that is 2i+1 s. The last clip of a video is often partial ([2i, duration));
    its frame is taken at the middle of the part that exists. Times past the video's end
    (an annotation longer than the file) are clamped to the end; the decoder then returns
    its last frame and counts it in `Frames.clamped`.
    """
    span = 1.0 / fps
    out = []
    for i in range(n_frames):
        start = i * span
        end = min(start + span, video_duration) if video_duration > start else start + span
        out.append(min((start + end) / 2.0, max(video_duration, 0.0)))
    return out


def candidate_frames(scores: Sequence[float], k_max: int = K_MAX) -> list[int]:
    """The frames that get query-aware captions: the top `ceil(k_max% * n)` by score, >= 1.

    Ordered best first (ties by frame index) so that a run with a smaller K takes a prefix.
    """
    n = len(scores)
    if n == 0:
        return []
    k = max(1, math.ceil(round(k_max * n / 100.0, 9)))
    return sorted(range(n), key=lambda i: (-float(scores[i]), i))[: min(k, n)]


# -- device and dtype -----------------------------------------------------------------------
def resolve_device(device: str | None = None) -> str:
    """`cuda` when a GPU is visible and no device is named, else `cpu`."""
    if device and device != "auto":
        return device
    import torch  # lazy: heavy optional (torch)

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | None, device: str, prefer_half: bool = True) -> Any:
    """A torch dtype from a name. `auto`: bfloat16 (or float16) on a GPU, float32 on CPU.

    Half precision on CPU is slow and some ops lack kernels, so `auto` never picks it there.
    """
    import torch  # lazy: heavy optional (torch)

    names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if dtype in (None, "", "auto"):
        if device.startswith("cuda") and prefer_half:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(sorted(names))}")
    return names[dtype]


def default_batch_size(device: str, gpu: int, cpu: int) -> int:
    """A batch size for the device: GPUs take large batches, a CPU small ones."""
    return gpu if device.startswith("cuda") else cpu


def hf_load_kwargs(device: str, dtype: Any, model_cls: Any) -> dict[str, Any]:
    """`from_pretrained` keywords that put the weights of a `model_cls` on `device` as they load.

    `device_map` (accelerate) streams each tensor to the GPU, so the model never sits in
    host memory first. A bare `cuda` becomes the current device (`cuda:N`): transformers
    would read it as `cuda:$LOCAL_RANK`, while the inputs go to the current device.
    FlashAttention-2 is asked for only where it can run: transformers finds a usable
    flash-attn (its own check: distribution and version), the device is CUDA, the dtype is
    half, and the class supports it (BLIP-2 does not: its Q-Former has no FA2 path, and
    asking for it is an error). Otherwise transformers picks its default (SDPA).
    """
    import torch  # lazy: heavy optional (torch)
    from transformers.utils import is_flash_attn_2_available  # lazy: heavy optional

    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    kw: dict[str, Any] = {"dtype": dtype, "device_map": device}
    half = dtype in (torch.float16, torch.bfloat16)
    if (device.startswith("cuda") and half and getattr(model_cls, "_supports_flash_attn", False)
            and is_flash_attn_2_available()):
        kw["attn_implementation"] = "flash_attention_2"
    return kw


def release_memory(device: str) -> None:
    """Give freed weights back: collect cycles, then empty the CUDA caching allocator."""
    gc.collect()
    if device.startswith("cuda"):
        import torch  # lazy: heavy optional (torch)

        torch.cuda.empty_cache()


def module_bytes(model: Any) -> int:
    """Bytes of a torch module's parameters and buffers (0 for anything else)."""
    total = 0
    for fn in ("parameters", "buffers"):
        for t in getattr(model, fn, lambda: ())():
            total += t.numel() * t.element_size()
    return total


class ModelBackend:
    """A backend whose model loads on first use and is unloaded when its stages are done.

    The builder keeps one model in memory at a time: it calls `unload()` after the last
    stage that uses a backend, so the next stage's time and peak memory (Table 4) never
    include it. `_held` names every attribute that holds weights, processors or tokenizers.
    """

    _held: ClassVar[tuple[str, ...]] = ("_model",)
    _model: Any = None
    device: str = ""

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model_bytes(self) -> int:
        """Bytes of the loaded weights (0 when not loaded)."""
        return module_bytes(self._model)

    def unload(self) -> None:
        """Drop the model (and its processors) and return its memory."""
        if not self.loaded:
            return
        for name in self._held:
            setattr(self, name, None)
        release_memory(self.device or "cpu")


def new_tokens(output: Any, input_ids: Any) -> Any:
    """The generated part of `generate`'s output.

    Decoder-only models return prompt + continuation; some multimodal models (older BLIP-2)
    return the continuation only. Slice only when the output starts with the prompt.
    """
    n = input_ids.shape[1]
    if output.shape[1] > n and bool((output[:, :n] == input_ids.to(output.device)).all()):
        return output[:, n:]
    return output


# -- base classes ---------------------------------------------------------------------------
class FrameDecoder(ABC):
    """Turns a video file into `Frames` at `fps` (0.5: one frame per 2-s clip).

    `max_side` bounds the longer image side (pixels) so a 1080p source does not blow up
    captioner tokens; frames are resized keeping the aspect ratio, never enlarged.
    """

    name: ClassVar[str] = ""

    def __init__(self, fps: float = FPS, max_side: int | None = 640, **_: Any) -> None:
        self.fps = float(fps)
        self.max_side = int(max_side) if max_side else None

    @abstractmethod
    def decode(self, path: str, vid: str, n_frames: int | None = None) -> Frames:
        """All frames of one video; `n_frames` None means as many clips as the file has.

        Raises `VideoError` naming `vid` and `path` when the file cannot be decoded.
        """

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) with the longer side at most `max_side`, aspect kept."""
        if self.max_side is None or max(width, height) <= self.max_side:
            return width, height
        scale = self.max_side / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def _resize(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        size = self.target_size(w, h)
        if size == (w, h):
            return np.ascontiguousarray(img)
        from PIL import Image  # lazy: image library, needed only with frames (Pillow)

        return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


class Rewriter(ModelBackend, ABC):
    """Instruction-guided query rewriting: per pair, `m` simplified and `m` detailed queries."""

    name: ClassVar[str] = ""
    model_id: str = ""
    revision: str = ""

    @abstractmethod
    def rewrite(self, queries: Sequence[str], pair: int, cache: Any = None) -> list[Any]:
        """One `RewriteResult` per query, in order (status ok or failed, never skipped).

        `cache` is the cache being built, for rewriters that read other entries (the
        spaCy stand-in reads the cached paraphrases)."""

    @classmethod
    def default_model_id(cls) -> str:
        """The model id a config means when it names this rewriter and no model."""
        return ""


class FrameFilter(ModelBackend):
    """sim(frame_i, q) for every frame of a video: the ranking that picks candidate frames.

    A filter with `needs_frames` implements `score_video(frames, queries)`; one without
    (a stand-in) implements `score_captions(cache, captions, queries)`. Not abstract: the
    builder calls whichever the filter's kind has.
    """

    name: ClassVar[str] = ""
    needs_frames: ClassVar[bool] = True
    model_id: str = ""


class Captioner(ModelBackend, ABC):
    """One caption per frame: query-agnostic for all frames, query-aware for candidates."""

    name: ClassVar[str] = ""
    model_id: str = ""

    @abstractmethod
    def agnostic(self, frames: Frames) -> list[str]:
        """A caption for every frame of `frames`, in frame order."""

    @abstractmethod
    def aware(self, frames: Frames, indices: Sequence[int], query: str) -> list[str]:
        """A caption for each frame in `indices` (in that order), guided by the query."""


