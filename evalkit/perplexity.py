"""Perplexity: per-example negative log-likelihoods, then aggregates.

Per example we keep the summed negative log-likelihood (natural log) and the number of scored
tokens, so two runs can be compared example by example. The definition is lm-evaluation-harness's
``loglikelihood_rolling`` (its ``hf`` model, e.g. the wikitext task), checked against lm-eval
0.4.13 itself in ``tests/evalkit/test_perplexity_lm_eval.py``:

- a text is encoded as lm-eval encodes it: ``tokenizer(text)`` with the tokenizer's default
  special tokens (so a tokenizer that adds a BOS gets it, and it is scored), except that a text
  already starting with the prefix token's string is encoded without them;
- the first token is predicted from a prefix token (the tokenizer's BOS, else EOS), so every
  token of the encoded text is scored;
- a text longer than the context goes through windows of at most ``max_length`` input tokens.
  lm-eval's first window reads the prefix and ``max_length - 1`` tokens and scores ``max_length``
  tokens (the last one is predicted, never read); each next window scores up to ``max_length``
  new tokens, with the one token before them as context. That is ``stride = max_length`` here;
  a smaller stride gives each window ``max_length - stride + 1`` tokens of context.

The code here is the plain reference; the fast path (:mod:`evalkit.accel`, on by default) gives
the same numbers within rounding.

Aggregates, as lm-eval's:

- token perplexity ``= exp(sum NLL / sum tokens)``;
- word perplexity ``= exp(sum NLL / sum words)``, words counted as ``len(re.split(r"\\s+", text))``;
- byte perplexity ``= exp(sum NLL / sum bytes)``, bytes of the UTF-8 text;
- bits per byte ``= sum NLL / sum bytes / ln 2``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from evalkit.distributed import Shard

DEFAULT_CONTEXT = 2048  # lm-eval's fallback when neither the config nor the tokenizer says


@dataclass(frozen=True)
class ExampleNLL:
    nll: float  # summed negative log-likelihood in nats
    tokens: int
    words: int
    bytes: int


def word_count(text: str) -> int:
    """Words as lm-eval counts them for word perplexity (its ``count_words``)."""
    return len(re.split(r"\s+", text))


def byte_count(text: str) -> int:
    """UTF-8 bytes, as lm-eval counts them for byte perplexity and bits per byte."""
    return len(text.encode("utf-8"))


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
    The model reads positions ``begin .. end - 2`` (at most ``max_length`` of them) and scores
    ``first .. end - 1``; after the first window, each scores up to ``stride`` new positions.
    ``stride = max_length`` gives lm-eval's disjoint windows with one token of context.
    """
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in 1..{max_length}, got {stride}")
    if n_tokens < 2:
        return []
    end = min(max_length + 1, n_tokens)
    windows = [(0, end, 1)]
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        windows.append((max(0, new_end - max_length - 1), new_end, end))
        end = new_end
    return windows


def window_rows(
    arrays: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None, max_length: int, stride: int
) -> list[tuple[int, int, int, int]]:
    """One row per window with a token to score, ``(sequence, begin, end, first scored)``,
    longest first (as lm-eval: a batch that does not fit fails at once)."""
    rows = []
    for index, seq in enumerate(arrays):
        for begin, end, first in rolling_windows(len(seq), max_length, stride):
            if masks is None or masks[index][first:end].any():
                rows.append((index, begin, end, first))
    rows.sort(key=lambda r: r[1] - r[2])
    return rows


def batch_arrays(batch, arrays, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input ids and labels of a batch of rows (right-padded, -100 where nothing is scored),
    and the sequence each row belongs to."""
    width = max(end - begin - 1 for _, begin, end, _ in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    labels = np.full((len(batch), width), -100, dtype=np.int64)
    owners = np.empty(len(batch), dtype=np.int64)
    for i, (index, begin, end, first) in enumerate(batch):
        seq = arrays[index]
        ids[i, : end - 1 - begin] = seq[begin : end - 1]
        # The logit at input column j predicts position begin + j + 1.
        target = seq[first:end]
        if masks is not None:
            target = np.where(masks[index][first:end], target, -100)
        labels[i, first - begin - 1 : end - begin - 1] = target
        owners[i] = index
    return ids, labels, owners


def batch_nll(model, ids: np.ndarray, labels: np.ndarray, autocast_dtype=None):
    """Summed NLL of each row: the whole model's logits, then cross-entropy (the reference).

    Right padding is invisible to the real positions of a causal model, so the attention mask
    is all ones (lm-eval passes none) and transformers takes its causal fast path; no key-value
    cache, as nothing is generated.
    """
    import torch

    device = next(model.parameters()).device
    enabled = autocast_dtype is not None
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=enabled),
    ):
        ids_t = torch.from_numpy(ids).to(device)
        mask = torch.ones_like(ids_t)
        logits = model(input_ids=ids_t, attention_mask=mask, use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1),
            torch.from_numpy(labels).to(device).flatten(),
            reduction="none",
        )
        return nll.view(ids.shape).sum(dim=1, dtype=torch.float64)


def sequence_nll(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    max_length: int,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    target_masks: Sequence[Sequence[bool]] | None = None,
    autocast_dtype=None,
    fast: bool | None = None,
    shard: Shard | None = None,
) -> list[tuple[float, int]]:
    """Summed NLL and scored-token count for each token sequence (its prefix token included).

    ``target_masks`` (one boolean per position of each sequence) limits the scoring to the
    positions marked True, e.g. the assistant's tokens of a conversation; position 0 is the
    prefix and never scored. Windows are the same with or without masks, so a masked NLL is the
    sum of the unmasked per-token NLLs at the marked positions.

    Runs on the model's device, ``batch_size`` windows at a time; ``autocast_dtype`` (e.g.
    ``torch.bfloat16`` on CUDA) runs the model under autocast, the log-probabilities are always
    taken in float32. ``fast`` (default: on, see :mod:`evalkit.accel`) takes the fast path,
    which gives these numbers within rounding. With ``shard`` (processes launched by torchrun)
    each process scores its share of the windows and every process gets every sequence's sums,
    added in the same order as one process adds them.
    """
    from tqdm.auto import tqdm

    from evalkit import accel

    stride = stride or max_length
    if target_masks is not None:
        if len(target_masks) != len(sequences):
            raise ValueError(
                f"{len(target_masks)} target masks for {len(sequences)} sequences: one each"
            )
        for i, (seq, mask) in enumerate(zip(sequences, target_masks)):
            if len(mask) != len(seq):
                raise ValueError(
                    f"target mask {i} has {len(mask)} entries for a sequence of {len(seq)}"
                )
    arrays = [np.asarray(seq, dtype=np.int64) for seq in sequences]
    masks = None if target_masks is None else [np.asarray(m, dtype=bool) for m in target_masks]
    rows = window_rows(arrays, masks, max_length, stride)
    if shard is not None:
        rows = shard.mine(rows)
    if accel.enabled(fast):
        from evalkit.accel.perplexity import fast_batches

        scored = fast_batches(
            model,
            rows,
            prepare=lambda batch: batch_arrays(batch, arrays, masks),
            plain=batch_nll,
            budget=batch_size * max_length,
            progress=progress,
            autocast_dtype=autocast_dtype,
        )
    else:
        scored = []
        for start in tqdm(range(0, len(rows), batch_size), disable=not progress or None):
            batch = rows[start : start + batch_size]
            ids, labels, owners = batch_arrays(batch, arrays, masks)
            scored.append((owners, batch_nll(model, ids, labels, autocast_dtype), labels))
    # One entry per window, in window order: the same sums every run, however many processes.
    owners = np.concatenate([np.empty(0, np.int64), *(o for o, _, _ in scored)])
    window_nll = np.concatenate([np.empty(0), *(n.cpu().numpy() for _, n, _ in scored)])
    scored_tokens = np.concatenate(
        [np.empty(0, np.int64), *((labels != -100).sum(1) for *_, labels in scored)]
    )
    if shard is not None:
        windows = shard.gather(list(zip(owners.tolist(), window_nll.tolist(), scored_tokens)))
        owners = np.array([w[0] for w in windows], dtype=np.int64)
        window_nll = np.array([w[1] for w in windows], dtype=np.float64)
        scored_tokens = np.array([w[2] for w in windows], dtype=np.int64)
    totals = np.zeros(len(arrays), dtype=np.float64)
    counts = np.zeros(len(arrays), dtype=np.int64)
    np.add.at(totals, owners, window_nll)
    np.add.at(counts, owners, scored_tokens)
    return [(float(nll), int(count)) for nll, count in zip(totals, counts)]


def context_length(model, tokenizer=None) -> int:
    """The model's context in tokens, found as lm-eval finds it (config, tokenizer, 2048)."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max is not None and model_max < 10**29:  # transformers' "no limit" is 1e30
        return int(model_max)
    return DEFAULT_CONTEXT


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text as lm-eval's ``loglikelihood_rolling`` sees it: the prefix token, then its ids.

    The tokenizer's own special tokens are added (a BOS it adds is scored), except for a text
    that already starts with the prefix token's string.
    """
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    if prefix is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to use as the prefix")
    prefix_text = tokenizer.decode(prefix)
    sequences: list[list[int]] = [[] for _ in texts]
    for special in (True, False):
        picked = [i for i, t in enumerate(texts) if t.startswith(prefix_text) != special]
        if not picked:
            continue
        encoded = _encode(tokenizer, [texts[i] for i in picked], special)
        for i, ids in zip(picked, encoded):
            sequences[i] = [prefix, *ids]
    return sequences


# A tokenizer class that overrides none of these adds nothing in Python to its Rust tokenizer.
_ENCODE_METHODS = (
    "__call__",
    "_call_one",
    "encode_plus",
    "batch_encode_plus",
    "_encode_plus",
    "_batch_encode_plus",
)


def _encode(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=special)["input_ids"]``, by the Rust tokenizer
    directly (a third less time: no Python objects per text beyond its ids) where the
    tokenizer's class adds nothing to it in Python and the ids match on two non-empty texts."""
    from transformers import PreTrainedTokenizerFast

    base = PreTrainedTokenizerFast
    plain = isinstance(tokenizer, base) and all(
        getattr(type(tokenizer), name, None) is getattr(base, name, None)
        for name in _ENCODE_METHODS
    )
    backend = tokenizer.backend_tokenizer if plain else None
    fast = getattr(backend, "encode_batch_fast", None)
    sample = list(itertools.islice((i for i, text in enumerate(texts) if text.strip()), 2))
    if fast is not None and sample:
        # The call first sets the Rust tokenizer as it encodes (no truncation, no padding).
        expected = tokenizer([texts[i] for i in sample], add_special_tokens=special)["input_ids"]
        if not backend.truncation and not backend.padding:
            encoded = [e.ids for e in fast(texts, add_special_tokens=special)]
            if [encoded[i] for i in sample] == expected:
                return encoded
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def text_nll(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    autocast_dtype=None,
    fast: bool | None = None,
    shard: Shard | None = None,
) -> list[ExampleNLL]:
    """Per-text NLL, token, word and byte counts, ready for the aggregates above (``shard``:
    as :func:`sequence_nll`)."""
    scores = sequence_nll(
        model,
        encode_texts(tokenizer, texts),
        max_length=max_length or context_length(model, tokenizer),
        stride=stride,
        batch_size=batch_size,
        progress=progress,
        autocast_dtype=autocast_dtype,
        fast=fast,
        shard=shard,
    )
    return [
        ExampleNLL(nll, count, word_count(text), byte_count(text))
        for text, (nll, count) in zip(texts, scores)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m evalkit.perplexity MODEL_DIR TEXTS.jsonl``: the aggregates, as one JSON line."""
    import argparse
    import gc
    import json

    parser = argparse.ArgumentParser(prog="python -m evalkit.perplexity", description=main.__doc__)
    parser.add_argument("model", help="model directory (Hugging Face format)")
    parser.add_argument("texts", help="JSONL file, one object a line")
    parser.add_argument("--field", default="text", help="the key holding each text")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    args = parser.parse_args(argv)

    from evalkit.models import load_model

    with open(args.texts, encoding="utf-8") as f:
        texts = [json.loads(line)[args.field] for line in f if line.strip()]
    model, tokenizer = load_model(args.model, device=args.device, require_chat_template=False)
    # Leave the objects of torch and transformers out of garbage collection, which would
    # otherwise walk them all again at exit.
    gc.freeze()
    scores = text_nll(model, tokenizer, texts, batch_size=args.batch_size)
    nll = [s.nll for s in scores]
    nbytes = [s.bytes for s in scores]
    result = {
        "texts": len(texts),
        "tokens": sum(s.tokens for s in scores),
        "token_perplexity": token_perplexity(nll, [s.tokens for s in scores]),
        "word_perplexity": word_perplexity(nll, [s.words for s in scores]),
        "byte_perplexity": byte_perplexity(nll, nbytes),
        "bits_per_byte": bits_per_byte(nll, nbytes),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
