"""Frame captioners: Qwen2.5-VL (the paper's) and BLIP-2 (its appendix), both modes.

- query-agnostic: every frame of a video, with the backbone's `agnostic_prompt`;
- query-aware: the candidate frames of one query (the top K_MAX% by the frame filter,
  `candidate_frames`), with the `aware_prompt` filled with the query's key entities and
  actions by the backbone's extractor (`entities = "spacy"`: spaCy's parse; `"rules"`: the
  word-list extractor of `entities.py`).

A captioner runs the caption backbone it names (`harness.cache.backbones`: the model id
and prompts are declared there, once; their text is part of the cache key). Generation is greedy. Batches never cross a video: a video's frames (agnostic)
or its queries' candidate frames (aware, all queries of the video together, sorted by
prompt so that equal prompts share a batch) are cut into batches of `batch_size` by
`plan_batches`, so which frames share a batch depends on the video alone, never on the
shard, the other videos or what was cached before. A caption can depend on its batch
mates: in half precision padding and kernel choice move the logits by rounding steps, and a
checkpoint's `repetition_penalty` (Qwen2.5-VL ships 1.05) also penalises the pad token a
shorter prompt is padded with. So "the same batch" is what makes two builds agree. Any hub id or local folder with the
same classes works (`model=`); on CPU the dtype is float32, on a GPU bf16/fp16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from harness.builder.backends.base import (
    Captioner,
    Frames,
    default_batch_size,
    hf_load_kwargs,
    new_tokens,
    resolve_device,
    resolve_dtype,
)
from harness.builder.backends.granular import spacy_key_elements  # noqa: F401 (registers "spacy")
from harness.builder.batching import plan_batches
from harness.cache.backbones import backbone as backbone_class
from harness.core.registries import CAPTIONERS, KEY_ELEMENT_EXTRACTORS


class HFCaptioner(Captioner):
    """Shared batching, prompting and decoding; subclasses load and build model inputs."""

    backbone: ClassVar[str] = ""
    _held = ("_model", "_processor")
    # frames per generate call: a 7B VLM at ~300 visual tokens a frame fits 32 on one GPU
    GPU_BATCH, CPU_BATCH = 32, 4

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = "auto",
        batch_size: int | None = None,
        max_new_tokens: int = 64,
        revision: str = "",
        **_: Any,
    ) -> None:
        bb = backbone_class(self.backbone)
        self.model_id = model or bb.model
        self.agnostic_prompt: str = bb.agnostic_prompt
        self.aware_template: str = bb.aware_prompt or ""
        self.entities: str = bb.entities or "rules"
        self.device_name = device
        self.dtype_name = dtype
        self._batch_size = batch_size
        self.max_new_tokens = int(max_new_tokens)
        self.revision = revision
        self.device = ""
        self._model: Any = None
        self._processor: Any = None

    @property
    def batch_size(self) -> int:
        """Frames per batch: as configured, else by device (known before any weights load)."""
        if self._batch_size:
            return max(1, int(self._batch_size))
        return default_batch_size(resolve_device(self.device_name), self.GPU_BATCH, self.CPU_BATCH)

    def aware_prompt(self, query: str) -> str:
        """The aware prompt for one query: its key entities and actions filled in."""
        fields = KEY_ELEMENT_EXTRACTORS.get(self.entities)(query).prompt_fields(query)
        return self.aware_template.format(**fields)

    def _kw(self) -> dict[str, Any]:
        return {"revision": self.revision} if self.revision else {}

    def load(self) -> None:
        if self._model is None:
            self.device = resolve_device(self.device_name)
            self._dtype = resolve_dtype(self.dtype_name, self.device)
            try:
                self._load()
            except OSError as e:
                raise FileNotFoundError(
                    f"{self.backbone} model {self.model_id!r} could not be loaded: {e}"
                ) from None
            self._model = self._model.eval()

    def _load(self) -> None:
        raise NotImplementedError

    def _inputs(self, images: list[Any], prompts: list[str]) -> Any:
        raise NotImplementedError

    def generate_batch(self, images: list[Any], prompts: Sequence[str]) -> list[str]:
        """One greedy caption per (PIL image, prompt), all in one `generate` call.

        Instruct checkpoints ship sampling defaults in their generation config
        (`do_sample=True`, temperature, top-p, top-k); each is overridden here.
        """
        import torch  # lazy: heavy optional (torch)

        self.load()
        enc = self._inputs(images, list(prompts))
        with torch.inference_mode():
            gen = self._model.generate(
                **enc, max_new_tokens=self.max_new_tokens, max_length=None, do_sample=False,
                temperature=None, top_p=None, top_k=None,
            )
        texts = self._processor.batch_decode(new_tokens(gen, enc["input_ids"]), skip_special_tokens=True)
        return [" ".join(str(t).split()) for t in texts]

    def caption_frames(self, frames: Frames, requests: Sequence[tuple[str, Sequence[int]]]) -> list[list[str]]:
        """Captions of one video's frames for several (prompt, frame indices) requests.

        Every (prompt, frame) pair of the video is planned into batches by `plan_batches`
        (sorted by prompt length, then prompt, then frame), so the batches are a function of
        the requests alone. Returns, per request, its captions in its index order.
        """
        pairs = [(r, j) for r, (_, idx) in enumerate(requests) for j in range(len(idx))]
        out: list[list[str]] = [[""] * len(idx) for _, idx in requests]
        if not pairs:
            return out

        def sort_key(pair: tuple[int, int]) -> tuple[int, str, int]:
            prompt, idx = requests[pair[0]]
            return (len(prompt), prompt, int(idx[pair[1]]))

        for batch in plan_batches(pairs, self.batch_size, sort_key=sort_key):
            images = frames.pil([requests[r][1][j] for r, j in batch])
            texts = self.generate_batch(images, [requests[r][0] for r, _ in batch])
            for (r, j), text in zip(batch, texts, strict=True):
                out[r][j] = text
        return out

    def agnostic(self, frames: Frames) -> list[str]:
        return self.caption_frames(frames, [(self.agnostic_prompt, range(len(frames)))])[0]

    def aware(self, frames: Frames, indices: Sequence[int], query: str) -> list[str]:
        return self.aware_many(frames, [(query, indices)])[0]

    def aware_many(self, frames: Frames, requests: Sequence[tuple[str, Sequence[int]]]) -> list[list[str]]:
        """Aware captions of several queries of one video: (query, candidate frames) each."""
        return self.caption_frames(frames, [(self.aware_prompt(q), idx) for q, idx in requests])


@CAPTIONERS.register("qwen2.5-vl")
class Qwen25VLCaptioner(HFCaptioner):
    """Qwen2.5-VL-7B-Instruct (`Qwen2_5_VLForConditionalGeneration` + `AutoProcessor`).

    Each frame is one image in a one-turn chat built with the processor's chat template.
    `max_pixels` (optional) caps the image size the processor feeds the vision tower.
    """

    name = "qwen2.5-vl"
    backbone = "qwen2.5-vl"

    def __init__(self, model: str | None = None, max_pixels: int | None = None, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.max_pixels = max_pixels

    def _load(self) -> None:
        from transformers import (  # lazy: heavy optional (transformers)
            AutoProcessor,
            Qwen2_5_VLForConditionalGeneration,
        )

        pkw = dict(self._kw())
        if self.max_pixels:
            pkw["max_pixels"] = int(self.max_pixels)
        self._processor = AutoProcessor.from_pretrained(self.model_id, **pkw)
        self._processor.tokenizer.padding_side = "left"
        self._model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.model_id, **hf_load_kwargs(self.device, self._dtype, Qwen2_5_VLForConditionalGeneration),
            **self._kw()
        )

    def _inputs(self, images: list[Any], prompts: list[str]) -> Any:
        texts = [
            self._processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                tokenize=False, add_generation_prompt=True,
            )
            for p in prompts
        ]
        enc = self._processor(text=texts, images=images, padding=True, return_tensors="pt")
        return enc.to(self.device)


@CAPTIONERS.register("blip2")
class Blip2Captioner(HFCaptioner):
    """BLIP-2 OPT-2.7b (`Blip2ForConditionalGeneration` + `Blip2Processor`).

    Its prompts are text prefixes (`harness.cache.backbones.Blip2OPT`: why they are what
    they are); the caption is the continuation only.
    """

    name = "blip2"
    backbone = "blip2"

    def _load(self) -> None:
        from transformers import (  # lazy: heavy optional (transformers)
            Blip2ForConditionalGeneration,
            Blip2Processor,
        )

        self._processor = Blip2Processor.from_pretrained(self.model_id, **self._kw())
        self._processor.tokenizer.padding_side = "left"
        self._model = Blip2ForConditionalGeneration.from_pretrained(
            self.model_id, **hf_load_kwargs(self.device, self._dtype, Blip2ForConditionalGeneration),
            **self._kw()
        )

    def _inputs(self, images: list[Any], prompts: list[str]) -> Any:
        enc = self._processor(images=images, text=prompts, padding=True, return_tensors="pt")
        enc = enc.to(self.device)
        enc["pixel_values"] = enc["pixel_values"].to(self._dtype)
        return enc
