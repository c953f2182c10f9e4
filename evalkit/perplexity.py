"""Perplexity: per-example negative log-likelihoods, then aggregates.

Per example we keep the summed negative log-likelihood (natural log) and the number of scored
tokens, so two runs can be compared example by example. The aggregates follow
lm-evaluation-harness's ``loglikelihood_rolling`` tasks (e.g. wikitext):

- token perplexity ``= exp(sum NLL / sum tokens)``;
- word perplexity ``= exp(sum NLL / sum words)``, words counted as ``len(re.split(r"\\s+", text))``;
- byte perplexity ``= exp(sum NLL / sum bytes)``, bytes of the UTF-8 text;
- bits per byte ``= sum NLL / sum bytes / ln 2``.

Like lm-eval, the first token is predicted from a prefix token (the tokenizer's BOS, else EOS), so
every token of the text is scored. A text longer than the context goes through a sliding window:
each window scores ``stride`` new tokens with the rest of the window as context; the default,
``max_length - 1``, gives lm-eval's disjoint windows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExampleNLL:
    nll: float  # summed negative log-likelihood in nats
    tokens: int
    words: int
    bytes: int


def token_perplexity(nll: Sequence[float], tokens: Sequence[int]) -> float:
    return math.exp(float(np.sum(nll)) / float(np.sum(tokens)))


def word_perplexity(nll: Sequence[float], words: Sequence[int]) -> float:
    return math.exp(float(np.sum(nll)) / float(np.sum(words)))


def byte_perplexity(nll: Sequence[float], nbytes: Sequence[int]) -> float:
    return math.exp(float(np.sum(nll)) / float(np.sum(nbytes)))


def bits_per_byte(nll: Sequence[float], nbytes: Sequence[int]) -> float:
    return float(np.sum(nll)) / float(np.sum(nbytes)) / math.log(2)


def rolling_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over ``n_tokens`` positions (prefix included) as ``(begin, end, first_scored)``.

    Position ``i`` is predicted from positions ``< i``; each of 1..n-1 is scored exactly once.
    A window holds at most ``max_length`` positions; after the first, each scores ``stride`` new
    ones. ``stride = max_length - 1`` gives lm-eval's disjoint windows with one token of context.
    """
    if not 0 < stride < max_length:
        raise ValueError(f"stride must be in 1..{max_length - 1}, got {stride}")
    if n_tokens < 2:
        return []
    end = min(max_length, n_tokens)
    windows = [(0, end, 1)]
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        windows.append((max(0, new_end - max_length), new_end, end))
        end = new_end
    return windows


def sequence_nll(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    max_length: int,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[tuple[float, int]]:
    """Summed NLL and scored-token count for each token sequence (its prefix token included)."""
    import torch
    from tqdm.auto import tqdm

    stride = stride or max_length - 1
    device = next(model.parameters()).device
    # One row per window: (sequence index, tokens, index within the window of the first target).
    rows = []
    for index, seq in enumerate(sequences):
        for begin, end, first in rolling_windows(len(seq), max_length, stride):
            rows.append((index, list(seq[begin:end]), first - begin))
    rows.sort(key=lambda r: len(r[1]))
    totals = [[0.0, 0] for _ in sequences]
    batches = range(0, len(rows), batch_size)
    with torch.inference_mode():
        for start in tqdm(batches, desc="perplexity", disable=not progress or None):
            batch = rows[start : start + batch_size]
            width = max(len(r[1]) for r in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            target_mask = torch.zeros(len(batch), width, dtype=torch.bool)
            attention = torch.zeros(len(batch), width, dtype=torch.long)
            for i, (_, tokens, first) in enumerate(batch):
                ids[i, : len(tokens)] = torch.tensor(tokens)
                attention[i, : len(tokens)] = 1
                target_mask[i, first : len(tokens)] = True
            ids, attention, target_mask = (
                ids.to(device),
                attention.to(device),
                target_mask.to(device),
            )
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            token_lp = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
            mask = target_mask[:, 1:]
            nll = -(token_lp * mask).sum(dim=1)
            for (index, _, _), value, count in zip(batch, nll.tolist(), mask.sum(1).tolist()):
                totals[index][0] += value
                totals[index][1] += count
    return [(nll, int(count)) for nll, count in totals]


def text_nll(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[ExampleNLL]:
    """Per-text NLL, token, word and byte counts, ready for the aggregates above."""
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    max_length = max_length or model.config.max_position_embeddings
    sequences = [[prefix, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    scores = sequence_nll(
        model,
        sequences,
        max_length=max_length,
        stride=stride,
        batch_size=batch_size,
        progress=progress,
    )
    return [
        ExampleNLL(nll, count, len(re.split(r"\s+", text)), len(text.encode("utf-8")))
        for text, (nll, count) in zip(texts, scores)
    ]
