"""The clip grid and the builder's fixed budgets: one home for numbers several stages share."""

from __future__ import annotations

CLIP_SECONDS = 2.0  # QVHighlights' clip grid: frame i stands for the clip [2i, 2i+2) s
FPS = 1.0 / CLIP_SECONDS  # frames per second sampled for every stage (0.5)
M_MAX = 5  # rewrites per kind the builder makes (and paraphrases per query); a run uses its first m
K_MAX = 30  # percent of frames that get aware captions; a run with K uses its top K%
MAX_WINDOWS = 1000  # windows per query a run writes or a prediction file holds (the official evaluator reads 10)
