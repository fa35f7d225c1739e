"""Frame captioners: Qwen2.5-VL (the paper's) and BLIP-2 (its appendix), both modes.

- query-agnostic: every frame of a video, with the backbone's `agnostic_prompt`;
- query-aware: the candidate frames of one query (the top K_MAX% by the frame filter,
  `candidate_frames`), with the `aware_prompt` filled with the query's key entities and
  actions by the preset's extractor (`entities: spacy` in captioners.yaml: spaCy's parse;
  `rules`: the word-list extractor of `entities.py`).

Prompts are data (`harness/prompts/captioners.yaml`) and their template text is part of the
cache key. Frames of one video are captioned in batches of `batch_size`; generation is
greedy, so a caption depends only on its frame and prompt. Any hub id or local folder with
the same classes works (`model=`); on CPU the dtype is float32, on a GPU bf16/fp16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from harness.build.backends.base import (
    CAPTIONERS,
    Captioner,
    Frames,
    new_tokens,
    resolve_device,
    resolve_dtype,
)
from harness.build.backends.entities import KEY_ELEMENT_EXTRACTORS
from harness.build.backends.granular import spacy_key_elements  # noqa: F401 (registers "spacy")
from harness.cache.producers import captioners as caption_presets


class HFCaptioner(Captioner):
    """Shared batching, prompting and decoding; subclasses load and build model inputs."""

    backbone: ClassVar[str] = ""

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 64,
        revision: str = "",
        **_: Any,
    ) -> None:
        preset = caption_presets()[self.backbone]
        self.model_id = model or preset["model"]
        self.agnostic_prompt: str = preset["agnostic_prompt"]
        self.aware_template: str = preset["aware_prompt"]
        self.entities: str = preset.get("entities", "rules")
        self.device_name = device
        self.dtype_name = dtype
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self.revision = revision
        self.device = ""
        self._model: Any = None
        self._processor: Any = None

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
            self._model = self._model.to(self.device).eval()

    def _load(self) -> None:
        raise NotImplementedError

    def _inputs(self, images: list[Any], prompts: list[str]) -> Any:
        raise NotImplementedError

    def caption_images(self, images: list[Any], prompts: Sequence[str]) -> list[str]:
        """One caption per (PIL image, prompt), generated `batch_size` at a time."""
        import torch  # lazy: heavy optional (torch)

        self.load()
        out: list[str] = []
        for s in range(0, len(images), self.batch_size):
            enc = self._inputs(images[s : s + self.batch_size], list(prompts[s : s + self.batch_size]))
            with torch.inference_mode():
                gen = self._model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None,
                )
            texts = self._processor.batch_decode(new_tokens(gen, enc["input_ids"]), skip_special_tokens=True)
            out.extend(" ".join(str(t).split()) for t in texts)
        return out

    def agnostic(self, frames: Frames) -> list[str]:
        return self.caption_images(frames.pil(), [self.agnostic_prompt] * len(frames))

    def aware(self, frames: Frames, indices: Sequence[int], query: str) -> list[str]:
        prompt = self.aware_prompt(query)
        return self.caption_images(frames.pil(indices), [prompt] * len(indices))


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
            self.model_id, dtype=self._dtype, **self._kw()
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

    The prompt is a text prefix ("a photo of"; the aware one a question); the caption is
    the continuation only.
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
            self.model_id, dtype=self._dtype, **self._kw()
        )

    def _inputs(self, images: list[Any], prompts: list[str]) -> Any:
        enc = self._processor(images=images, text=prompts, padding=True, return_tensors="pt")
        enc = enc.to(self.device)
        enc["pixel_values"] = enc["pixel_values"].to(self._dtype)
        return enc
