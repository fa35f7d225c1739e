"""The built-in demo dataset: SYNTHETIC videos, queries and every cached stage.

It exists so that every pairing, every table and the whole runner can be exercised
anywhere in seconds, with no benchmark files and no GPU. Its numbers mean nothing about
GranAlign: every output made from it says `dataset: demo:val` and is marked synthetic.

The generator is deterministic (a fixed seed). Each video is a sequence of scenes (a
subject doing an action in a place, with an incidental detail); each query describes one
scene, its GT window is that scene. Agnostic captions are generic scene descriptions
(Qwen2.5-VL-like: full sentence; BLIP-2-like: shorter), aware captions mention the
query's entities and actions when the candidate frame shows them, rewrites are simplified
(core subject + action) and detailed (everything), paraphrases keep the granularity.
The cache side (writing all of this under the real producers' keys, in the demo's own
cache folder so that synthetic text can never answer a real query) is `harness.cache.demo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from harness.core.constants import CLIP_SECONDS, M_MAX
from harness.core.query import Query
from harness.data.spec import register_dataset

DEMO_DATASET = "demo:val"
SEED = 20261124

SUBJECTS = ["man", "woman", "child", "dog", "chef", "girl", "old man", "teenager"]
ACTIONS = [
    ("cooking", "cooking pasta in a large pot"),
    ("riding a bike", "riding a red bike down a hill"),
    ("playing guitar", "playing an acoustic guitar and singing"),
    ("reading", "reading a thick book on a sofa"),
    ("walking", "walking slowly along the shore"),
    ("painting", "painting a wall with a roller"),
    ("washing dishes", "washing dishes under running water"),
    ("dancing", "dancing to loud music with friends"),
    ("running", "running past parked cars at dusk"),
    ("eating", "eating a sandwich at a wooden table"),
]
PLACES = ["kitchen", "park", "living room", "street", "beach", "studio", "garden", "office"]
DETAILS = ["wearing a red hat", "with a blue backpack", "in slow motion", "while laughing",
           "holding a phone", "next to a window"]
SYNONYMS = {"man": "guy", "woman": "lady", "child": "kid", "dog": "puppy", "chef": "cook",
            "girl": "young girl", "old man": "elderly man", "teenager": "teen"}


@dataclass(frozen=True)
class Scene:
    subject: str
    action: int
    place: str
    detail: str
    first: int
    last: int  # inclusive frame index


@dataclass(frozen=True)
class DemoVideo:
    vid: str
    n_frames: int
    duration: float
    scenes: tuple[Scene, ...]

    def scene_at(self, i: int) -> Scene:
        return next(s for s in self.scenes if s.first <= i <= s.last)


@dataclass(frozen=True)
class DemoQuery:
    query: Query
    scene: Scene


@cache
def demo_world(n_videos: int = 24) -> tuple[tuple[DemoVideo, ...], tuple[DemoQuery, ...]]:
    rng = np.random.default_rng(SEED)
    videos, queries = [], []
    for v in range(n_videos):
        n_frames = int(rng.integers(30, 61))
        n_scenes = int(rng.integers(3, 6))
        cuts = np.sort(rng.choice(np.arange(4, n_frames - 3), size=n_scenes - 1, replace=False))
        bounds = [0, *cuts.tolist(), n_frames]
        subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]  # one protagonist: confusers
        scenes = []
        for s in range(n_scenes):
            scenes.append(
                Scene(
                    subject if rng.random() < 0.7 else SUBJECTS[int(rng.integers(len(SUBJECTS)))],
                    int(rng.integers(len(ACTIONS))),
                    PLACES[int(rng.integers(len(PLACES)))],
                    DETAILS[int(rng.integers(len(DETAILS)))],
                    bounds[s],
                    bounds[s + 1] - 1,
                )
            )
        # a partial last clip on some videos: duration not a multiple of 2 s
        duration = n_frames * CLIP_SECONDS - (1.0 if v % 3 == 0 else 0.0)
        video = DemoVideo(f"demo_{v:03d}", n_frames, duration, tuple(scenes))
        videos.append(video)
        for k, scene in enumerate(rng.choice(scenes, size=2, replace=False)):
            text = (
                f"A {scene.subject} {scene.detail} is {ACTIONS[scene.action][1]} in the {scene.place}."
                if k == 0
                else f"{scene.subject.capitalize()} {ACTIONS[scene.action][0]} in the {scene.place}."
            )
            window = (scene.first * CLIP_SECONDS, min((scene.last + 1) * CLIP_SECONDS, duration))
            saliency = {
                i: tuple(int(x) for x in rng.integers(2, 5, size=3))
                for i in range(scene.first, scene.last + 1)
            }
            q = Query(len(queries), video.vid, text, duration, (window,), saliency)
            queries.append(DemoQuery(q, scene))
    return tuple(videos), tuple(queries)


@register_dataset("demo", splits=("val",), protocol="qvhighlights", synthetic=True,
                  description="24 generated videos, every cache stage filled (harness.data.demo)")
def load_demo(root: Path, split: str) -> tuple[Sequence[Query], str]:
    """The built-in SYNTHETIC demo: needs no data root."""
    _, queries = demo_world()
    return [dq.query for dq in queries], "synthetic (harness.data.demo)"


# -- captions, rewrites, frame-filter scores -------------------------------------------------
def agnostic_caption(scene: Scene, i: int, rng: np.random.Generator, style: str) -> str:
    subject = SYNONYMS[scene.subject] if rng.random() < 0.3 else scene.subject
    if rng.random() < 0.12:
        return "A blurry frame with people moving." if style == "full" else "a blurry photo"
    if style == "full":
        return f"A {subject} {ACTIONS[scene.action][0]} in a {scene.place}."
    return f"a {subject} in the {scene.place}"


def aware_caption(scene: Scene, target: Scene, rng: np.random.Generator) -> str:
    short, long = ACTIONS[target.action]
    if scene.action == target.action and scene.subject == target.subject:
        extra = target.detail if rng.random() < 0.8 else ""
        return f"The {scene.subject} {extra} is {long} in the {scene.place}.".replace("  ", " ")
    if scene.subject == target.subject:
        return f"The {scene.subject} is not {short}; the {scene.subject} is {ACTIONS[scene.action][1]}."
    return f"No {target.subject} {short} here; a {scene.subject} in the {scene.place}."


def frame_filter_scores(video: DemoVideo, target: Scene, rng: np.random.Generator) -> list[float]:
    out = []
    for i in range(video.n_frames):
        s = video.scene_at(i)
        score = 0.18 + 0.05 * (s.subject == target.subject) + 0.06 * (s.action == target.action)
        score += 0.02 * (s.place == target.place) + float(rng.normal(0, 0.015))
        out.append(round(score, 5))
    return out


def rewrites(dq: DemoQuery, pair: int, rng: np.random.Generator) -> dict[str, list[str]]:
    sc = dq.scene
    short, long = ACTIONS[sc.action]
    noise = (pair - 1) * 0.08  # later pairs drift a little: Table 13 has something to show
    qs, qd = [], []
    for j in range(M_MAX):
        subject = SYNONYMS[sc.subject] if (j % 2) else sc.subject
        if rng.random() < noise:
            qs.append(f"A {subject} in the {sc.place}.")
        else:
            qs.append(f"A {subject} {short}." if j % 3 else f"A {subject} is {short}.")
        tail = f" in the {sc.place}" if rng.random() > noise else ""
        qd.append(f"A {sc.subject} {sc.detail} is {long}{tail}, seen clearly in this moment.")
    return {"qs": qs, "qd": qd}


def paraphrases(dq: DemoQuery, rng: np.random.Generator) -> list[str]:
    sc = dq.scene
    short, long = ACTIONS[sc.action]
    forms = [
        f"In the {sc.place}, a {sc.subject} is {long}.",
        f"A {SYNONYMS[sc.subject]} {sc.detail} {short} in the {sc.place}.",
        f"We see a {sc.subject} {long} in the {sc.place}.",
        f"The {sc.subject} is {short} in the {sc.place}, {sc.detail}.",
        f"There is a {sc.subject} {long}.",
    ]
    rng.shuffle(forms)
    return forms
