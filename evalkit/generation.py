"""Batched, deterministic, cached generation of chat responses.

Prompts are conversations rendered with the model's chat template and a generation prompt,
left-padded into batches and decoded with a KV cache. Decoding is greedy, or sampled with a
generator seeded per prompt, so a response never depends on which prompts shared its batch.
Repetition penalty and no-repeat n-grams use transformers' logits processors.

Responses are cached in the store by (model hash, chat-template fingerprint, prompt, decoding
parameters): a second run regenerates nothing, and a run that died resumes where it stopped,
whatever the batch size or number of processes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.store import open_store, transaction

CACHE_SCHEMA = """CREATE TABLE IF NOT EXISTS generation_cache (
    key VARCHAR PRIMARY KEY,
    model_hash VARCHAR,
    chat_template_fingerprint VARCHAR,
    decoding JSON,
    text VARCHAR,
    tokens INTEGER,
    finish_reason VARCHAR
)"""


@dataclass(frozen=True)
class DecodingConfig:
    """How responses are decoded; part of the cache key. ``temperature = 0`` is greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, list | tuple) or not all(isinstance(x, str) and x for x in stop):
            raise EvalkitError(f"decoding: stop {self.stop!r} is not a string or list of strings")
        object.__setattr__(self, "stop", tuple(stop))
        for name in ("max_new_tokens", "top_k", "seed", "no_repeat_ngram_size"):
            _check_number(name, getattr(self, name), int)
        for name in ("temperature", "top_p", "repetition_penalty"):
            _check_number(name, getattr(self, name), int | float)
        if self.max_new_tokens < 1:
            raise EvalkitError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise EvalkitError(
                "decoding: temperature must be >= 0, top_p in (0, 1], repetition_penalty > 0"
            )

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def decoding_config(params: dict) -> DecodingConfig:
    """The decoding parameters among a task's keys (the suite checks there are no others)."""
    known = {f.name for f in fields(DecodingConfig)}
    return DecodingConfig(**{k: v for k, v in params.items() if k in known})


def _check_number(name: str, value, kind) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "whole number" if kind is int else "number"
        raise EvalkitError(f"decoding: {name} {value!r} is not a {what}")


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # tokens generated, the stopping token included
    finish_reason: str  # "stop" (end of turn or a stop sequence) or "length"


@dataclass
class CacheContext:
    """What identifies the model in the cache, and where the cache lives."""

    store: Path
    model_hash: str
    chat_template_fingerprint: str
    hits: int = field(default=0)


def cache_key(context: CacheContext, messages: list[dict], config: DecodingConfig) -> str:
    payload = json.dumps(
        [context.model_hash, context.chat_template_fingerprint, messages, config.key()],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _prompt_seed(messages: list[dict], config: DecodingConfig) -> int:
    """The sampling seed of one prompt: from the prompt and the decoding, not its batch."""
    payload = json.dumps([messages, config.key()], sort_keys=True, ensure_ascii=False)
    return int(hashlib.sha256(payload.encode()).hexdigest()[:15], 16)


def _processors(config: DecodingConfig):
    from transformers.generation import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.temperature > 0:
        processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


def _stop_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    ids.discard(None)
    return ids


class TextStream:
    """A response's text as its tokens come, only as far as the final text is sure to start so:
    stop tokens left out, leading whitespace dropped, trailing whitespace, a split character
    and the last ``len(stop) - 1`` characters held back (they may be cut at the end)."""

    def __init__(self, model, tokenizer, config: DecodingConfig):
        self.tokenizer = tokenizer
        self.stop_ids = _stop_ids(model, tokenizer)
        self.hold = max((len(s) for s in config.stop), default=1) - 1
        self.sent = ""

    def delta(self, tokens: Sequence[int]) -> str:
        """The new settled text since the last call."""
        ids = [t for t in tokens if t not in self.stop_ids]
        text = self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        text = text.split("\ufffd")[0].rstrip()  # a character whose bytes are not all there yet
        settled = text[: max(0, len(text) - self.hold)]
        if len(settled) <= len(self.sent) or not settled.startswith(self.sent):
            return ""
        delta, self.sent = settled[len(self.sent) :], settled
        return delta

    def rest(self, final: str) -> str:
        """What is left to send once the response is final."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _cache_argument(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _generate_batch(
    model, tokenizer, prompts: list[list[int]], config, seeds, on_token=None
) -> list[Generation]:
    """Decode one left-padded batch; ``on_token(row, tokens)`` sees each row's tokens so far
    after every step that added one and did not end it (a server streams them)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        attention[i, width - len(p) :] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    processors = _processors(config)
    generators = None
    if config.temperature > 0:
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    stop_ids = _stop_ids(model, tokenizer)
    history = ids  # prompt and generated tokens, for the repetition processors
    new_tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    stopped = [False] * len(prompts)
    # The model's own cache, from its first step on; newer transformers name it `cache`.
    cache_name, cache = _cache_argument(model), {}
    step_ids = ids
    with torch.inference_mode():
        for _ in range(config.max_new_tokens):
            out = model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                **cache,
            )
            cache = {cache_name: getattr(out, cache_name)}
            scores = processors(history, out.logits[:, -1, :].float())
            if generators is None:
                chosen = scores.argmax(-1)
            else:
                probs = torch.softmax(scores, dim=-1)
                chosen = torch.cat(
                    [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
                )
            for i, token in enumerate(chosen.tolist()):
                if done[i]:
                    continue
                new_tokens[i].append(token)
                if token in stop_ids:
                    done[i] = stopped[i] = True
                elif config.stop:
                    text = tokenizer.decode(new_tokens[i], skip_special_tokens=True)
                    if _cut_at_stop(text, config.stop)[1]:
                        done[i] = stopped[i] = True
                if on_token is not None and not stopped[i]:
                    on_token(i, new_tokens[i])
            if all(done):
                break
            step_ids = chosen[:, None]
            history = torch.cat([history, step_ids], dim=1)
            attention = torch.cat([attention, attention.new_ones((len(prompts), 1))], dim=1)
            positions = positions[:, -1:] + 1
    results = []
    for tokens, was_stopped in zip(new_tokens, stopped):
        text = tokenizer.decode(
            [t for t in tokens if t not in stop_ids], skip_special_tokens=True
        ).strip()
        text = _cut_at_stop(text, config.stop)[0].strip()
        results.append(Generation(text, len(tokens), "stop" if was_stopped else "length"))
    return results


def generate(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    config: DecodingConfig | None = None,
    *,
    batch_size: int = 16,
    cache: CacheContext | None = None,
    progress: bool = False,
    on_token=None,
) -> list[Generation]:
    """The model's next assistant turn for each conversation, in order.

    A prompt longer than the context minus ``max_new_tokens`` keeps its last tokens.

    With ``cache``, responses already in the store are read back and each finished batch is
    written at once, so an interrupted run loses at most one batch. ``on_token(index, tokens)``
    is told each conversation's generated tokens so far as they come (responses read from the
    cache are not).
    """
    from tqdm.auto import tqdm

    config = config or DecodingConfig()
    if not tokenizer.chat_template:
        raise EvalkitError(
            "generation needs a chat template, and the model's tokenizer has none",
            hint="set tokenizer.chat_template and save the model again",
        )
    conversations = [list(c) for c in conversations]
    keys = [cache_key(cache, c, config) if cache else "" for c in conversations]
    results: list[Generation | None] = [None] * len(conversations)
    if cache:
        for i, found in _cache_lookup(cache, keys).items():
            results[i] = found
        cache.hits += sum(r is not None for r in results)
    todo = [i for i, r in enumerate(results) if r is None]
    rendered = {
        i: tokenizer.apply_chat_template(
            conversations[i], add_generation_prompt=True, return_dict=False
        )
        for i in todo
    }
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        room = context - config.max_new_tokens
        if room < 1:
            raise EvalkitError(
                f"max_new_tokens {config.max_new_tokens} leaves no room for a prompt in the "
                f"model's context of {context} tokens",
                hint="lower max_new_tokens",
            )
        # as lm-eval does: a prompt too long for the context keeps its most recent tokens
        rendered = {i: ids[-room:] for i, ids in rendered.items()}
    todo.sort(key=lambda i: len(rendered[i]))  # similar lengths share a batch: little padding
    batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
    for batch in tqdm(batches, desc="generate", disable=not progress or None):
        seeds = [_prompt_seed(conversations[i], config) for i in batch]
        row_token = None if on_token is None else (lambda row, ids, b=batch: on_token(b[row], ids))
        out = _generate_batch(
            model, tokenizer, [rendered[i] for i in batch], config, seeds, row_token
        )
        for i, generation in zip(batch, out):
            results[i] = generation
        if cache:
            _cache_store(cache, config, [(keys[i], results[i]) for i in batch])
    return results  # type: ignore[return-value]


def _cache_lookup(cache: CacheContext, keys: list[str]) -> dict[int, Generation]:
    with open_store(cache.store) as con:
        con.execute(CACHE_SCHEMA)
        rows = con.execute(
            "SELECT key, text, tokens, finish_reason FROM generation_cache "
            "WHERE key IN (SELECT unnest(?::VARCHAR[]))",
            [sorted(set(keys))],
        ).fetchall()
    by_key = {key: Generation(text, tokens, reason) for key, text, tokens, reason in rows}
    return {i: by_key[k] for i, k in enumerate(keys) if k in by_key}


def _cache_store(cache: CacheContext, config: DecodingConfig, rows) -> None:
    with open_store(cache.store) as con, transaction(con):
        con.execute(CACHE_SCHEMA)
        con.executemany(
            "INSERT OR IGNORE INTO generation_cache VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    key,
                    cache.model_hash,
                    cache.chat_template_fingerprint,
                    config.key(),
                    g.text,
                    g.tokens,
                    g.finish_reason,
                )
                for key, g in rows
            ],
        )
