"""The fast path of :func:`evalkit.perplexity.sequence_nll`: the same sums, in less time.

- Windows go into batches by a token budget rather than a count, similar lengths together, so
  short texts share larger batches and little compute goes to padding (:func:`token_batches`).
- The model runs with faster layers (:mod:`evalkit.accel.layers`) and its output layer only at
  the scored positions (:mod:`evalkit.accel.output_layer`), on the CPU as one oneDNN op.
- On the CPU a small model's batches run on one worker thread per core, each thread running its
  ops on one core (:func:`cpu_workers`).

Each speedup is checked against the plain path on two rows before it is used, and left out
where the numbers differ by more than rounding.
"""

from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import torch
from tqdm.auto import tqdm

from evalkit.accel.layers import fast_layers, onednn_linear, onednn_ready, same_within_rounding
from evalkit.accel.output_layer import output_layer_split, split_nll

# Tokens in a CPU batch (padding included), at most: the fastest size measured with the default
# base model and its GELU fused (benchmarks/RESULTS.md). A quarter of that where the whole model
# runs and every position's logits over the vocabulary are kept.
CPU_BATCH_TOKENS = 4096
PADDING_SLACK = 0.05  # padding is at most this share of a batch's tokens (see token_batches)
# Up to this size, a model's ops are short and its batches small: whole batches go to parallel
# threads, and on the CPU its linear layers are swapped for oneDNN ones (a copy of their
# weights). Larger models have matmuls long enough for torch's own threads, and one batch at a
# time keeps their (vocabulary-wide) logits in memory once.
SMALL_MODEL_PARAMETERS = 50_000_000


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


def small_model(model) -> bool:
    return sum(p.numel() for p in model.parameters()) <= SMALL_MODEL_PARAMETERS


def _one_thread_here() -> None:
    """Run this thread's ops on one core, leaving every other thread's setting alone.

    OpenMP keeps the thread count per thread, but ``torch.set_num_threads`` also sets a
    process-wide value; so torch's own per-thread set-up runs first (any call that reads the
    count does it), then OpenMP is told directly, for this thread only.
    """
    torch.get_num_threads()
    ctypes.CDLL(None).omp_set_num_threads(1)


def _openmp_per_thread() -> bool:
    """Whether torch runs its ops with OpenMP, whose thread count this process can set per
    thread (the symbol is there once torch is loaded)."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        ctypes.CDLL(None).omp_set_num_threads  # noqa: B018 -- the lookup is the check
    except AttributeError:
        return False
    return True


@contextmanager
def cpu_workers():
    """Where CPU batches run, and on how many threads: one worker thread per core, each running
    its ops on one core; else the caller (``(None, 1)``).

    A small model's ops are too short for torch's intra-op threads: the threads mostly wait for
    each other, and on a busy machine (CI runners, shared VMs) every op waits until all of them
    are scheduled at once, which made scoring about 15x slower on a loaded 2-core VM. Whole
    batches on separate threads (torch releases the GIL inside ops), each running its ops on
    one core, keep every core busy with no such rendezvous. The caller's thread settings are
    left as they are.
    """
    threads = torch.get_num_threads()
    if threads == 1 or not _openmp_per_thread():
        yield None, 1
        return
    with ThreadPoolExecutor(
        threads, thread_name_prefix="evalkit-perplexity", initializer=_one_thread_here
    ) as pool:
        yield pool, threads
