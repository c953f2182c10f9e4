"""Where a small model's ops run: on one core per thread.

A small model's ops are too short for torch's intra-op threads: the threads mostly wait for
each other, and on a busy machine every op waits until all of them are scheduled at once. So
scoring runs whole batches on one worker thread per core (:func:`cpu_workers`), and the
server's decoding thread runs its ops on one core (:func:`one_thread_here`), leaving the other
cores to the HTTP side. OpenMP keeps its thread count per thread: no other thread's setting
changes.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

# Up to this size, a model's ops are short and its batches small: whole batches go to parallel
# threads, and on the CPU its linear layers are swapped for oneDNN ones (a copy of their
# weights). Larger models have matmuls long enough for torch's own threads, and one batch at a
# time keeps their (vocabulary-wide) logits in memory once.
SMALL_MODEL_PARAMETERS = 50_000_000


def small_model(model) -> bool:
    return sum(p.numel() for p in model.parameters()) <= SMALL_MODEL_PARAMETERS


def one_thread_here() -> None:
    """Run this thread's ops on one core, leaving every other thread's setting alone.

    OpenMP keeps the thread count per thread, but ``torch.set_num_threads`` also sets a
    process-wide value; so torch's own per-thread set-up runs first (any call that reads the
    count does it), then OpenMP is told directly, for this thread only.
    """
    torch.get_num_threads()
    ctypes.CDLL(None).omp_set_num_threads(1)


def openmp_per_thread() -> bool:
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
    if threads == 1 or not openmp_per_thread():
        yield None, 1
        return
    with ThreadPoolExecutor(
        threads, thread_name_prefix="evalkit-perplexity", initializer=one_thread_here
    ) as pool:
        yield pool, threads
