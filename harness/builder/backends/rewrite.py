"""Granularity-based query rewriting with a causal LM (paper section 3.2, Appendix E).

For instruction pair p (text in `harness/prompts/rewrite_instructions.yaml`) the LM is asked
twice per query: once for `m` simplified rewrites (`qs`), once for `m` detailed ones (`qd`).
The cache value is `{"qs": [m str], "qd": [m str]}` under `rewrite_producer(...)`.

Answers are parsed robustly (`parse_rewrites`): a JSON list (also inside a code fence or
after some chatter), a Python-style list, numbered or bulleted lines, quoted strings, and,
last, plain sentence lines. Items are cleaned (quotes, labels like "Simplified:"), and
verbatim echoes of the query, duplicates and echoes of the instruction are dropped: an LM
that repeats the query has not rewritten it. An answer with fewer than `m` usable items is
retried with sampling (a few attempts, each seeded from the query, kind, pair and attempt
number, so reruns give the same text); after the last attempt the entry is stored with
status "failed", `value` holding what did parse and `meta` the raw answers and the error.
It is never replaced by the raw query.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.builder.backends.base import (
    Rewriter,
    default_batch_size,
    hf_load_kwargs,
    new_tokens,
    resolve_device,
    resolve_dtype,
)
from harness.cache.producers import DEFAULT_REWRITER_MODEL, instruction_pairs
from harness.core.constants import M_MAX
from harness.core.io import sha256_hex
from harness.core.registries import REWRITERS

KINDS = {"qs": "simplified", "qd": "detailed"}


class RewriteParseError(ValueError):
    """An answer without `m` usable rewrites; `partial` holds the ones that did parse."""

    def __init__(self, message: str, partial: list[str]) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class RewriteResult:
    """One query's rewrites for one pair: the cache entry's value, status and meta."""

    query: str
    value: dict[str, list[str]]
    status: str  # "ok" | "failed"
    meta: dict[str, Any] = field(default_factory=dict)


# -- parsing --------------------------------------------------------------------------------
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_LIST_LINE = re.compile(r"^\s*(?:\(?\d{1,2}[.):\]]|[-*\u2022\u2013]|#{1,3})\s+(.*\S)\s*$")
# a quoted string that is not a JSON object key (`"name": ...`)
_QUOTED = re.compile(r"\"([^\"\n]{3,})\"(?!\s*:)|\u201c([^\u201d\n]{3,})\u201d(?!\s*:)")
_TEXT_KEYS = ("text", "query", "rewrite", "sentence", "version", "simplified", "detailed", "content")
_LABEL = re.compile(
    r"^(?:(?:simplified|simple|detailed|detail|rewritten|rewrite|version|query|paraphrase|"
    r"sentence|option)\s*(?:query|version|rewrite|sentence)?\s*\d*\s*[:\-\u2013.)]\s*)+",
    re.I,
)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _clean(item: str) -> str:
    s = " ".join(item.split())
    for _ in range(3):
        s = s.strip().rstrip(",;").strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1]
        s = _LABEL.sub("", s).strip()
    return s.strip().strip(_QUOTES).strip()


def _from_obj(obj: Any) -> list[str] | None:
    if not isinstance(obj, list):
        return None
    out = []
    for x in obj:
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):  # [{"text": ...}]: the one string, or a text-like key
            strs = {k: v for k, v in x.items() if isinstance(v, str)}
            named = [v for k, v in strs.items() if str(k).lower() in _TEXT_KEYS]
            if len(strs) == 1 or named:
                out.append(named[0] if named else next(iter(strs.values())))
    return out or None


def _json_lists(text: str) -> list[list[str]]:
    """Every list literal in `text` that holds strings (JSON first, then Python syntax)."""
    found: list[list[str]] = []
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch != "[":
            continue
        items = None
        try:
            obj, _ = dec.raw_decode(text[i:])
            items = _from_obj(obj)
        except ValueError:
            j = text.find("]", i)
            while j != -1 and items is None:
                try:
                    items = _from_obj(ast.literal_eval(text[i : j + 1]))
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    pass
                j = text.find("]", j + 1)
        if items:
            found.append(items)
    return found


def _candidates(text: str) -> list[tuple[str, list[str]]]:
    """(method, raw items) in order of trust."""
    out: list[tuple[str, list[str]]] = []
    bodies = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for body in bodies:
        for items in _json_lists(body):
            out.append(("json", items))
    lines = text.splitlines()
    listed = [m.group(1) for line in lines if (m := _LIST_LINE.match(line))]
    if listed:
        out.append(("list-lines", listed))
    # the weaker readings keep only phrases (>= 2 words): single quoted words are JSON keys
    # or values of a malformed answer (`"type"`, `"name"`), not rewrites of a video query
    quoted = [q for a, b in _QUOTED.findall(text) if len((q := a or b).split()) >= 2]
    if quoted:
        out.append(("quoted", quoted))
    plain = [
        ln for ln in (x.strip() for x in lines)
        if ln and not ln.endswith(":") and len(ln.split()) >= 2
        and sum(c.isalpha() for c in ln) >= 0.5 * len(ln)
        and not any(tok in ln for tok in ("```", "{", "}", '":'))
    ]
    if plain:
        out.append(("lines", plain))
    return out


def usable(items: Sequence[str], query: str) -> tuple[list[str], dict[str, int]]:
    """Cleaned items minus echoes of the query or instruction and duplicates."""
    seen: set[str] = set()
    q = _norm(query)
    kept: list[str] = []
    dropped = {"echo": 0, "duplicate": 0, "empty": 0, "instruction": 0}
    for raw in items:
        s = _clean(raw)
        n = _norm(s)
        if not n:
            dropped["empty"] += 1
        elif n == q:
            dropped["echo"] += 1
        elif "json" in n.split() or n.startswith(("query ", "answer ", "here are", "rewrite the")):
            dropped["instruction"] += 1
        elif n in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(n)
            kept.append(s)
    return kept, dropped


def parse_rewrites(text: str, m: int, query: str) -> list[str]:
    """The first `m` usable rewrites in an LM answer; `RewriteParseError` if fewer.

    Tries each reading of the answer (see the module docstring) and takes the first that
    yields `m` usable items; on failure the error carries the best partial list.
    """
    best: list[str] = []
    best_note = "no list, numbered lines or quoted strings found"
    for method, items in _candidates(text):
        kept, dropped = usable(items, query)
        if len(kept) >= m:
            return kept[:m]
        if len(kept) > len(best) or not best:
            best = kept
            lost = ", ".join(f"{v} {k}" for k, v in dropped.items() if v)
            best_note = f"{method}: {len(items)} items, {len(kept)} usable" + (
                f" ({lost} dropped)" if lost else ""
            )
    raise RewriteParseError(f"expected {m} rewrites, parsed {len(best)} ({best_note})", best)


# -- the transformers backend ---------------------------------------------------------------
def split_gguf(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """`dir/name.gguf` -> (`dir`, `name.gguf`): how transformers loads a GGUF file."""
    if gguf_file:
        return model, gguf_file
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return str(path.parent), path.name
    return model, None


@REWRITERS.register("hf-causal-lm")
class HFCausalLMRewriter(Rewriter):
    """Any transformers causal LM: a hub id, a local folder or a GGUF file (`gguf_file=`).

    The paper's model is LLaMA-3-8B-Instruct (the default). Prompts go through the
    tokenizer's chat template when it has one (instruct models answer far better), else
    the instruction is fed as plain text. The first attempt is greedy and batched; retries
    sample (temperature, top_p) one prompt at a time with a per-prompt seed, so a result
    never depends on which other queries shared its batch.
    """

    name = "hf-causal-lm"

    def __init__(
        self,
        model: str = DEFAULT_REWRITER_MODEL,
        revision: str = "",
        gguf_file: str | None = None,
        device: str | None = None,
        dtype: str | None = "auto",
        batch_size: int | None = None,
        max_new_tokens: int = 384,
        attempts: int = 3,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        m: int = M_MAX,
        trust_remote_code: bool = False,
        **_: Any,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.model_id = model
        self.revision = revision or ""
        self.source, self.gguf_file = split_gguf(model, gguf_file)
        self.device_name = device
        self.dtype_name = dtype
        self._batch_size = batch_size
        self.max_new_tokens = int(max_new_tokens)
        self.attempts = int(attempts)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.m = int(m)
        self.trust_remote_code = trust_remote_code
        self._model: Any = None
        self._tok: Any = None
        self.device = ""

    _held = ("_model", "_tok")
    # queries per batch (two prompts each); an 8B model in bf16 has room for far more,
    # but a batch waits for its longest answer
    GPU_BATCH, CPU_BATCH = 16, 4

    @property
    def batch_size(self) -> int:
        """Queries per batch: as configured, else by device (known before any weights load)."""
        if self._batch_size:
            return max(1, int(self._batch_size))
        return default_batch_size(resolve_device(self.device_name), self.GPU_BATCH, self.CPU_BATCH)

    # -- loading --------------------------------------------------------------------------
    def load(self) -> None:
        """Tokenizer and model, once (a GGUF file is read by transformers' GGUF loader)."""
        if self._model is not None:
            return
        from transformers import (  # lazy: heavy optional (transformers)
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
        )
        from transformers.models.auto.modeling_auto import (  # lazy: heavy optional
            MODEL_FOR_CAUSAL_LM_MAPPING,
        )

        self.device = resolve_device(self.device_name)
        dtype = resolve_dtype(self.dtype_name, self.device)
        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kw["revision"] = self.revision
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        try:
            tok = AutoTokenizer.from_pretrained(self.source, **kw)
            config = AutoConfig.from_pretrained(self.source, **kw)
            model_cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
            model = AutoModelForCausalLM.from_pretrained(
                self.source, config=config, **hf_load_kwargs(self.device, dtype, model_cls), **kw)
        except OSError as e:
            raise FileNotFoundError(f"rewriter model {self.model_id!r} could not be loaded: {e}") from None
        if tok.pad_token is None:  # LLaMA-3 ships none; padded positions are masked out
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"  # decoder-only batched generation
        self._tok = tok
        self._model = model.eval()

    @property
    def has_chat_template(self) -> bool:
        self.load()
        return bool(getattr(self._tok, "chat_template", None))

    # -- prompts --------------------------------------------------------------------------
    def prompts(self, query: str, pair: int) -> dict[str, str]:
        """{"qs": instruction, "qd": instruction} for one query and pair."""
        pairs = instruction_pairs()
        if pair not in pairs:
            raise ValueError(f"unknown instruction pair {pair}; valid: {sorted(pairs)}")
        return {
            kind: pairs[pair][label].format(query=query, m=self.m) for kind, label in KINDS.items()
        }

    def render(self, instruction: str) -> str:
        if self.has_chat_template:
            return str(self._tok.apply_chat_template(
                [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
            ))
        return instruction + "\n"

    def encode(self, instructions: Sequence[str]) -> Any:
        """The batch `generate` feeds the model: rendered, left-padded, on the device.

        A chat template writes the BOS token itself (LLaMA-3's does), and the tokenizer
        would add a second one, so special tokens are added only without a template.
        """
        self.load()
        texts = [self.render(t) for t in instructions]
        return self._tok(
            texts, return_tensors="pt", padding=True, add_special_tokens=not self.has_chat_template
        ).to(self.device)

    def generate(self, instructions: Sequence[str], sample: bool = False, seed: int = 0) -> list[str]:
        """The model's answers (new text only) to already-filled instructions."""
        import torch  # lazy: heavy optional (torch)

        enc = self.encode(instructions)
        gen: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "max_length": None,  # generation configs carry one (LLaMA-3: 4096); ours rules
            "pad_token_id": self._tok.pad_token_id,
            "do_sample": sample,
        }
        if sample:
            gen.update(temperature=self.temperature, top_p=self.top_p)
            torch.manual_seed(seed)
        else:  # instruct models ship do_sample=True generation configs: override them all
            gen.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self._model.generate(**enc, **gen)
        return [str(s) for s in self._tok.batch_decode(new_tokens(out, enc["input_ids"]),
                                                      skip_special_tokens=True)]

    def _seed(self, query: str, kind: str, pair: int, attempt: int) -> int:
        return int(sha256_hex(f"{self.seed}|{pair}|{kind}|{attempt}|{query}")[:8], 16)

    # -- the stage ------------------------------------------------------------------------
    @classmethod
    def default_model_id(cls) -> str:
        return DEFAULT_REWRITER_MODEL

    def rewrite(self, queries: Sequence[str], pair: int, cache: Any = None) -> list[RewriteResult]:
        jobs = [(qi, kind, text) for qi, q in enumerate(queries) for kind, text in self.prompts(q, pair).items()]
        raw: dict[tuple[int, str], list[str]] = {(qi, k): [] for qi, k, _ in jobs}
        parsed: dict[tuple[int, str], list[str]] = {}
        errors: dict[tuple[int, str], str] = {}
        partial: dict[tuple[int, str], list[str]] = {}

        def take(qi: int, kind: str, answer: str) -> None:
            raw[(qi, kind)].append(answer)
            try:
                parsed[(qi, kind)] = parse_rewrites(answer, self.m, queries[qi])
                errors.pop((qi, kind), None)
            except RewriteParseError as e:
                errors[(qi, kind)] = str(e)
                if len(e.partial) >= len(partial.get((qi, kind), [])):
                    partial[(qi, kind)] = e.partial

        step = 2 * self.batch_size
        for start in range(0, len(jobs), step):
            chunk = jobs[start : start + step]
            for (qi, kind, _), answer in zip(chunk, self.generate([t for _, _, t in chunk]), strict=True):
                take(qi, kind, answer)
        for attempt in range(2, self.attempts + 1):
            for qi, kind, text in jobs:
                if (qi, kind) in parsed:
                    continue
                seed = self._seed(queries[qi], kind, pair, attempt)
                take(qi, kind, self.generate([text], sample=True, seed=seed)[0])

        results = []
        for qi, q in enumerate(queries):
            value = {k: parsed.get((qi, k), partial.get((qi, k), [])) for k in KINDS}
            meta: dict[str, Any] = {
                "raw": {k: raw[(qi, k)] for k in KINDS},
                "attempts": {k: len(raw[(qi, k)]) for k in KINDS},
                "chat_template": self.has_chat_template,
                "max_new_tokens": self.max_new_tokens,
            }
            failed = {k: errors[(qi, k)] for k in KINDS if (qi, k) not in parsed}
            if failed:
                meta["error"] = failed
            results.append(RewriteResult(q, value, "failed" if failed else "ok", meta))
        return results
