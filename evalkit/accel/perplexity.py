"""The fast path of :func:`evalkit.perplexity.sequence_nll`: the same sums, in less time.

- Windows go into batches by a token budget rather than a count, similar lengths together, so
  short texts share larger batches and little compute goes to padding (:func:`token_batches`).
- The model runs with faster layers (:mod:`evalkit.accel.layers`) and its output layer only at
  the scored positions (:mod:`evalkit.accel.output_layer`), on the CPU as one oneDNN op.
- On the CPU a small model's batches run on one worker thread per core, each thread running its
  ops on one core (:func:`evalkit.accel.threads.cpu_workers`).

Each speedup is checked against the plain path on two rows before it is used, and left out
where the numbers differ by more than rounding.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from evalkit.accel.layers import fast_layers, onednn_linear, onednn_ready, same_within_rounding
from evalkit.accel.output_layer import output_layer_split, split_nll
from evalkit.accel.threads import cpu_workers, small_model

# Tokens in a CPU batch (padding included), at most: the fastest size measured with the default
# base model and its GELU fused (benchmarks/RESULTS.md). A quarter of that where the whole model
# runs and every position's logits over the vocabulary are kept.
CPU_BATCH_TOKENS = 4096
PADDING_SLACK = 0.05  # padding is at most this share of a batch's tokens (see token_batches)


def fast_batches(model, rows, *, prepare, plain, budget, progress=False, autocast_dtype=None):
    """``(owners, summed NLL of each row, labels)`` of every batch, as the plain path of
    :func:`evalkit.perplexity.sequence_nll` gives them.

    ``rows`` are its windows; ``prepare(batch)`` gives a batch's ``(ids, labels, owners)`` and
    ``plain(model, ids, labels, autocast_dtype)`` the plain row sums, the reference that every
    speedup is checked against. ``budget`` is the most tokens (padding included) in a batch;
    on the CPU at most :data:`CPU_BATCH_TOKENS`.
    """
    device = next(model.parameters()).device

    def score(batch, split=None):
        ids, labels, owners = prepare(batch)
        if split is None:
            return owners, plain(model, ids, labels, autocast_dtype), labels
        enabled = autocast_dtype is not None
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=enabled),
        ):
            ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
            labels_t = torch.from_numpy(labels).to(device, non_blocking=True)
            chunk = 128 if device.type == "cpu" else 4096
            row_nll = split_nll(split, ids_t, labels_t, chunk, linear)
        return owners, row_nll, labels

    # Faster layers and the output layer apart, each once two rows prove it the same model: two
    # of median length, cheaper than the longest; any row shows a change in the math.
    probe = rows[len(rows) // 2 : len(rows) // 2 + 2]
    reference = score(probe)[1] if probe else None

    def same(split=None) -> bool:
        return same_within_rounding(score(probe, split)[1], reference, autocast_dtype is not None)

    small = small_model(model)
    onednn = device.type == "cpu" and autocast_dtype is None and small
    linear = onednn_linear if onednn and onednn_ready(model) else torch.nn.functional.linear
    workers = cpu_workers() if device.type == "cpu" and small else nullcontext((None, 1))
    with fast_layers(model, same, onednn=onednn), workers as (pool, threads):
        split = output_layer_split(model) if probe else None
        if split is not None:
            try:
                split = split if same(split) else None
            except Exception:  # a body that does not take these inputs: use the whole model
                split = None
        if device.type == "cpu":  # parallelism comes from the workers; small batches stay in cache
            budget = min(budget, CPU_BATCH_TOKENS if split else CPU_BATCH_TOKENS // 4)
        batches = token_batches(rows, budget, threads)
        run = functools.partial(score, split=split)
        with tqdm(total=len(batches), desc="perplexity", disable=not progress or None) as bar:
            scored = pool.map(run, batches) if pool else map(run, batches)
            results = []
            for result in scored:  # (tqdm's update returns True when it redraws)
                results.append(result)
                bar.update()
            return results


def token_batches(rows: list, budget: int, workers: int = 1) -> list[list]:
    """Consecutive rows (longest first) in batches of at most ``budget`` padded tokens.

    The first batch is as large as the budget allows, so a batch that does not fit in memory
    fails at once. A later batch also ends where the next row would bring its padding over
    ``PADDING_SLACK`` of its tokens and over ``budget // 32`` tokens (a batch costs more than
    that much padding), so little compute goes to padding. With several workers the last
    batches shrink (guided scheduling: at most a ``2 * workers``-th of the tokens left each,
    but no less than ``budget // 8``), so the workers finish together instead of one waiting
    for the other's last full batch.
    """
    widths = [max(r[2] - r[1] - 1, 1) for r in rows]
    left = sum(widths)
    batches, start = [], 0
    while start < len(rows):
        width = widths[start]
        size = budget if workers == 1 else max(min(budget, left // (2 * workers)), budget // 8)
        end, tokens = start + 1, width
        while end < len(rows) and (end - start + 1) * width <= size:
            padding = (end - start + 1) * width - tokens - widths[end]
            if start and padding > max(PADDING_SLACK * (end - start + 1) * width, budget // 32):
                break
            tokens += widths[end]
            end += 1
        batches.append(rows[start:end])
        left -= tokens
        start = end
    return batches
