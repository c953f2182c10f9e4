"""Batched, deterministic, cached generation of chat responses.

Prompts are conversations rendered with the model's chat template and a generation prompt,
decoded together with a KV cache (:class:`PlainCache` over transformers' forward, the
reference; for GPT-2 the fast path's :class:`evalkit.accel.decoding.SlotCache`). Decoding is
greedy, or sampled with a generator seeded per prompt, so a response never depends on which
prompts shared its batch.
Repetition penalty and no-repeat n-grams use transformers' logits processors.

Responses are cached in the store by (model hash, chat-template fingerprint, prompt, decoding
parameters): a second run regenerates nothing, and a run that died resumes where it stopped,
whatever the batch size or number of processes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from evalkit.distributed import Shard
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
    # the mean negative log-likelihood of the generated tokens under the model itself (before
    # temperature and the processors): a cheap confidence signal the drift job watches
    # (not part of equality: it differs in the last bits with the batch, the text does not)
    nll: float | None = field(default=None, compare=False)


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


def prompt_seed(messages: list[dict], config: DecodingConfig) -> int:
    """The sampling seed of one prompt: from the prompt and the decoding, not its batch."""
    payload = json.dumps([messages, config.key()], sort_keys=True, ensure_ascii=False)
    return int(hashlib.sha256(payload.encode()).hexdigest()[:15], 16)


def _processors(config: DecodingConfig) -> tuple[list, list]:
    """transformers' processors for ``config``: those that read a row's tokens (repetition
    penalty, then the n-gram ban), and the warpers that read only the scores."""
    from transformers.generation import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    repetition, warpers = [], []
    if config.repetition_penalty != 1.0:
        repetition.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        repetition.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.temperature > 0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            warpers.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(config.top_p))
    return repetition, warpers


def _banned(row: Row, n: int):
    """The tokens that would repeat an n-gram of the row (prompt included), as transformers'
    ``NoRepeatNGramLogitsProcessor`` finds them."""
    ids, ngrams = row.ids, row.ngrams
    for end in range(max(row.indexed, n - 1), len(ids)):
        ngrams.setdefault(tuple(ids[end - n + 1 : end]), set()).add(ids[end])
    row.indexed = len(ids)
    if len(ids) + 1 < n:
        return ()
    return ngrams.get(tuple(ids[len(ids) - n + 1 :]), ())


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


def _kv(cache) -> list[list]:
    """The key and value tensors of every layer of a transformers cache, (batch, heads, time,
    dim) each: ``cache.layers[i].keys/values`` in newer transformers, ``key_cache`` before."""
    if hasattr(cache, "layers"):
        return [[layer.keys, layer.values] for layer in cache.layers]
    return [list(kv) for kv in zip(cache.key_cache, cache.value_cache)]


def _set_kv(cache, tensors: list[list]) -> None:
    if hasattr(cache, "layers"):
        for layer, (keys, values) in zip(cache.layers, tensors):
            layer.keys, layer.values = keys, values
    else:
        cache.key_cache = [k for k, _ in tensors]
        cache.value_cache = [v for _, v in tensors]


class PlainCache:
    """A running batch over transformers' forward and its own key-value cache: the reference.

    :meth:`prefill` adds rows (prompts left-padded into a batch of their own, whose cache is
    merged into the running one, the shorter side left-padded along time), :meth:`step` feeds
    each row one token, :meth:`keep` lets rows go (their cache rows dropped). Positions count
    each row's own tokens and padding is masked, so a row's logits do not depend on the rows
    beside it. The fast path (:class:`evalkit.accel.decoding.SlotCache`) does the same.
    """

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_name = _cache_argument(model)
        self.cache = self.attention = self.positions = None

    def prefill(self, prompts: list[list[int]]):
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids, attention, positions, None)
        if self.cache is None:
            self.cache, self.attention, self.positions = cache, attention, positions[:, -1:]
        else:
            self._merge(cache, attention, positions[:, -1:])
        return logits

    def step(self, tokens: list[int]):
        import torch

        last = torch.tensor(tokens, device=self.device)[:, None]
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(last), 1))], 1)
        self.positions = self.positions + 1
        logits, self.cache = self._forward(last, self.attention, self.positions, self.cache)
        return logits

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self.cache = self.attention = self.positions = None
            return
        index = self.attention.new_tensor(rows)
        attention = self.attention[index]
        start = int(attention.any(0).int().argmax())  # columns that are padding in every row
        self.attention, self.positions = attention[:, start:], self.positions[index]
        _set_kv(self.cache, [[t[index, :, start:] for t in kv] for kv in _kv(self.cache)])

    def _forward(self, ids, attention, positions, cache):
        extra = {} if cache is None else {self.cache_name: cache}
        out = self.model(
            input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **extra
        )
        cache = getattr(out, self.cache_name, None)
        if cache is None:
            cache = out.past_key_values
        return out.logits[:, -1, :].float(), cache

    def _merge(self, cache, attention, positions) -> None:
        import torch
        import torch.nn.functional as F

        extra = attention.shape[1] - self.attention.shape[1]
        old, new = _kv(self.cache), _kv(cache)
        if extra > 0:  # the newcomers are longer: pad the running rows on the left
            old = [[F.pad(t, (0, 0, extra, 0)) for t in kv] for kv in old]
            self.attention = F.pad(self.attention, (extra, 0))
        elif extra < 0:
            new = [[F.pad(t, (0, 0, -extra, 0)) for t in kv] for kv in new]
            attention = F.pad(attention, (-extra, 0))
        _set_kv(self.cache, [[torch.cat([a, b]) for a, b in zip(x, y)] for x, y in zip(old, new)])
        self.attention = torch.cat([self.attention, attention])
        self.positions = torch.cat([self.positions, positions])


# model -> whether the fast path's logits agreed with the plain path's on its first prompts
_fast_agrees: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _running_batch(model, prompts: list[list[int]], fast: bool | None):
    """The fast running batch where it applies and, on the first prompts a model is given,
    agrees with the plain one (a prefill and a step, within rounding); else the plain one."""
    from evalkit import accel

    if not accel.enabled(fast):
        return PlainCache(model)
    from evalkit.accel.decoding import SlotCache, supports

    if not supports(model):
        return PlainCache(model)
    if model not in _fast_agrees:
        from evalkit.accel.layers import same_within_rounding

        probe = prompts[:4]
        plain, slots = PlainCache(model), SlotCache(model, len(probe))
        expected, got = plain.prefill(probe), slots.prefill(probe)
        agree = same_within_rounding(got, expected)
        tokens = expected.argmax(-1).tolist()
        agree = agree and same_within_rounding(slots.step(tokens), plain.step(tokens))
        _fast_agrees[model] = agree
    return SlotCache(model) if _fast_agrees[model] else PlainCache(model)


@dataclass(eq=False)
class Row:
    """One prompt being decoded: its tokens so far and how it stops."""

    history: object  # the prompt and the generated tokens (1-d tensor), for the processors
    generator: object  # seeded torch.Generator when sampling, else None
    on_token: object = None  # on_token(tokens) after each token that does not end it by a stop
    limit: int = 0  # the most tokens it may have
    tokens: list[int] = field(default_factory=list)
    nll: float = 0.0  # summed over the tokens
    done: bool = False
    stopped: bool = False
    tag: object = None  # the caller's
    ids: list[int] = field(default_factory=list)  # ``history`` as a list, for the n-gram ban
    ngrams: dict = field(default_factory=dict)  # (n - 1 tokens) -> the tokens that followed
    indexed: int = 0  # how many of ``ids`` ``ngrams`` has seen


class Decoder:
    """Step-level decoding of prompts that share decoding parameters (but for
    ``max_new_tokens``, which may be set per prompt).

    Prompts join between steps (:meth:`add` prefills them and their first tokens are chosen)
    and rows leave as soon as they are done (:meth:`finished` takes them out, and their
    cache). A row's tokens do not depend on the rows beside it: the running batch
    (:class:`PlainCache`, or the fast path's :class:`evalkit.accel.decoding.SlotCache` where
    it applies; ``fast`` as in :mod:`evalkit.accel`) gives each row its own logits, the
    repetition processors see only its own tokens and sampling draws from its own generator,
    seeded per prompt. The repetition processors run row by row (transformers' own, the
    reference) or, unless ``fast`` is False, on all rows at once (:meth:`_repetition`).
    """

    def __init__(self, model, tokenizer, config: DecodingConfig, fast: bool | None = None):
        self.model, self.tokenizer, self.config, self.fast = model, tokenizer, config, fast
        self.device = next(model.parameters()).device
        from transformers.generation import LogitsProcessorList

        repetition, self.warpers = _processors(config)
        self.processors = LogitsProcessorList(repetition + self.warpers)  # the reference
        self.per_row = bool(repetition)  # they read a row's own tokens, never a padded batch's
        self.batched = self.per_row and fast is not False
        self.penalty = repetition[0] if config.repetition_penalty != 1.0 else None
        # what the processors read of a row: its history as a tensor, its tokens as a list
        self.histories = self.per_row and not (self.batched and self.penalty is None)
        self.ngrams = self.batched and config.no_repeat_ngram_size > 0
        self.stop_ids = _stop_ids(model, tokenizer)
        self.rows: list[Row] = []
        self.batch = None

    def add(
        self, prompts: list[list[int]], seeds: list[int], on_token=None, tags=None, limits=None
    ):
        """Prefill ``prompts`` and choose their first tokens; ``on_token[i]``, ``tags[i]`` and
        ``limits[i]`` (its ``max_new_tokens``, if not the decoder's) belong to prompt i.
        Returns their rows."""
        import torch

        sampling = self.config.temperature > 0
        rows = [
            Row(
                history=torch.tensor(p, device=self.device),
                ids=list(p) if self.ngrams else [],
                generator=torch.Generator(device=self.device).manual_seed(seeds[i])
                if sampling
                else None,
                on_token=on_token[i] if on_token else None,
                tag=tags[i] if tags else None,
                limit=limits[i] if limits else self.config.max_new_tokens,
            )
            for i, p in enumerate(prompts)
        ]
        with torch.inference_mode():
            if self.batch is None:
                self.batch = _running_batch(self.model, prompts, self.fast)
            logits = self.batch.prefill(prompts)
        self.rows += rows
        self._choose(rows, logits)
        return rows

    def step(self) -> None:
        """One token more for every row (rows must not be done: call :meth:`finished`)."""
        import torch

        with torch.inference_mode():
            logits = self.batch.step([r.tokens[-1] for r in self.rows])
        self._choose(self.rows, logits)

    def finished(self) -> list[Row]:
        """Take the rows that are done out of the batch, and their cache."""
        gone = [r for r in self.rows if r.done]
        if not gone:
            return []
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        import torch

        self.rows = [self.rows[i] for i in keep]
        with torch.inference_mode():
            self.batch.keep(keep)
        return gone

    def result(self, row: Row) -> Generation:
        text = self.tokenizer.decode(
            [t for t in row.tokens if t not in self.stop_ids], skip_special_tokens=True
        ).strip()
        text = _cut_at_stop(text, self.config.stop)[0].strip()
        reason = "stop" if row.stopped else "length"
        return Generation(text, len(row.tokens), reason, row.nll / max(len(row.tokens), 1))

    def _choose(self, rows: list[Row], logits) -> None:
        """The next token of each of ``rows``, from its logits (one row of ``logits`` each)."""
        import torch

        if self.batched:
            scores = self._repetition(rows, logits)
            for warper in self.warpers:
                scores = warper(None, scores)
        elif self.per_row:
            scores = torch.cat(
                [self.processors(r.history[None], logits[i : i + 1])
                 for i, r in enumerate(rows)]
            )  # fmt: skip
        else:
            scores = self.processors(None, logits)
        if self.config.temperature > 0:
            probs = torch.softmax(scores, dim=-1)
            chosen = torch.cat(
                [torch.multinomial(probs[i], 1, generator=r.generator) for i, r in enumerate(rows)]
            )
        else:
            chosen = scores.argmax(-1)
        nll = -torch.log_softmax(logits, -1).gather(1, chosen[:, None])[:, 0]
        for row, token, loss in zip(rows, chosen.tolist(), nll.tolist()):
            row.nll += loss
            self._record(row, token)
        if self.histories:
            for row, token in zip(rows, chosen):
                row.history = torch.cat([row.history, token[None]])
        if self.ngrams:
            for row, token in zip(rows, chosen.tolist()):
                row.ids.append(token)

    def _repetition(self, rows: list[Row], logits):
        """The repetition processors on every row at once, each row reading only its own tokens;
        equal to transformers' processors row by row (tested). The penalty is transformers' own,
        on the histories padded with each row's first token (a token seen twice is penalized
        once); the n-grams of a row are indexed as it grows, not found anew at every step."""
        import torch

        scores = logits
        if self.penalty is not None:
            ids = torch.nn.utils.rnn.pad_sequence(
                [r.history for r in rows], batch_first=True, padding_value=-1
            )
            scores = self.penalty(torch.where(ids < 0, ids[:, :1], ids), scores)
        if n := self.config.no_repeat_ngram_size:
            vocab = scores.shape[-1]  # a token past the output layer's cannot be chosen
            banned = [(i, t) for i, row in enumerate(rows) for t in _banned(row, n) if t < vocab]
            if banned:
                scores = scores.clone() if scores is logits else scores
                at, tokens = zip(*banned)
                scores[list(at), list(tokens)] = -float("inf")
        return scores

    def _record(self, row: Row, token: int) -> None:
        row.tokens.append(token)
        if token in self.stop_ids:
            row.done = row.stopped = True
        elif self.config.stop:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            row.done = row.stopped = _cut_at_stop(text, self.config.stop)[1]
        if len(row.tokens) >= row.limit:
            row.done = True
        if row.on_token is not None and not row.stopped:
            row.on_token(row.tokens)


def _generate_batch(
    model, tokenizer, prompts: list[list[int]], config, seeds, on_token=None, fast=None
) -> list[Generation]:
    """Decode one batch; ``on_token(row, tokens)`` sees each row's tokens so far after every
    step that added one and did not end it (a server streams them)."""
    decoder = Decoder(model, tokenizer, config, fast)
    callbacks = None
    if on_token is not None:
        callbacks = [lambda tokens, i=i: on_token(i, tokens) for i in range(len(prompts))]
    rows = decoder.add(prompts, seeds, callbacks)
    decoder.finished()
    while decoder.rows:
        decoder.step()
        decoder.finished()
    return [decoder.result(r) for r in rows]


def render(model, tokenizer, conversations, config: DecodingConfig) -> list[list[int]]:
    """The prompts' tokens: chat template and generation prompt; a prompt longer than the
    context minus ``max_new_tokens`` keeps its last tokens."""
    rendered = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False)
        for c in conversations
    ]
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
        rendered = [ids[-room:] for ids in rendered]
    return rendered


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
    shard: Shard | None = None,
    fast: bool | None = None,
) -> list[Generation]:
    """The model's next assistant turn for each conversation, in order.

    A prompt longer than the context minus ``max_new_tokens`` keeps its last tokens.

    With ``cache``, responses already in the store are read back and each finished batch is
    written at once, so an interrupted run loses at most one batch. ``on_token(index, tokens)``
    is told each conversation's generated tokens so far as they come (responses read from the
    cache are not).

    With ``shard`` (processes launched by torchrun) the batches are dealt out in rounds, one to
    each process, and every process gets every response; rank 0 alone reads and writes the
    cache, after each round. The batches are the ones a single process makes.
    """
    from tqdm.auto import tqdm

    config = config or DecodingConfig()
    if not tokenizer.chat_template:
        raise EvalkitError(
            "generation needs a chat template, and the model's tokenizer has none",
            hint="set tokenizer.chat_template and save the model again",
        )
    shard = shard or Shard()
    cache = cache if shard.writes else None
    conversations = [list(c) for c in conversations]
    keys = [cache_key(cache, c, config) if cache else "" for c in conversations]
    results: list[Generation | None] = [None] * len(conversations)
    if cache:
        for i, found in _cache_lookup(cache, keys).items():
            results[i] = found
        cache.hits += sum(r is not None for r in results)
    results = shard.broadcast(results)
    todo = [i for i, r in enumerate(results) if r is None]
    rendered = dict(zip(todo, render(model, tokenizer, [conversations[i] for i in todo], config)))
    todo.sort(key=lambda i: len(rendered[i]))  # similar lengths share a batch: little padding
    batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
    rounds = [batches[s : s + shard.world] for s in range(0, len(batches), shard.world)]
    for dealt in tqdm(rounds, desc="generate", disable=not progress or None):
        batch = dealt[shard.rank] if shard.rank < len(dealt) else []
        seeds = [prompt_seed(conversations[i], config) for i in batch]
        row_token = None if on_token is None else (lambda row, ids, b=batch: on_token(b[row], ids))
        out = (
            _generate_batch(
                model, tokenizer, [rendered[i] for i in batch], config, seeds, row_token, fast
            )
            if batch
            else []
        )
        made = [pair for part in shard.all_gather(list(zip(batch, out))) for pair in part]
        for i, generation in made:
            results[i] = generation
        if cache:
            _cache_store(cache, config, [(keys[i], results[i]) for i, _ in made])
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
