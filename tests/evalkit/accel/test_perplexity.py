"""The fast scoring path gives the plain path's numbers; each of its parts alone does too."""

import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from evalkit import accel
from evalkit.accel.output_layer import output_layer_split, split_nll
from evalkit.accel.perplexity import PADDING_SLACK, token_batches
from evalkit.accel.threads import cpu_workers
from evalkit.models import load_model
from evalkit.perplexity import (
    batch_arrays,
    batch_nll,
    encode_texts,
    text_nll,
    window_rows,
)

TEXTS = [
    "hello there, how are you?",
    "I like dogs.\nDo you?",
    "what do you do for fun? i like to go hiking with my dog on weekends, and you? " * 6,
    "so tell me about your week, anything fun happen? " * 3,
] * 2


@pytest.mark.parametrize(("given", "env", "expected"), [
    (None, None, True), (None, "0", False), (None, "off", False), (True, "0", True),
    (False, None, False), (None, "1", True),
])  # fmt: skip
def test_one_switch(monkeypatch, given, env, expected):
    if env is None:
        monkeypatch.delenv(accel.ENV, raising=False)
    else:
        monkeypatch.setenv(accel.ENV, env)
    assert accel.enabled(given) is expected


def test_fast_and_plain_agree_and_leave_the_model_as_it_was(micro_model):
    model, tokenizer = load_model(micro_model, device="cpu")
    modules = [type(m) for m in model.modules()]
    threads = torch.get_num_threads()
    plain = text_nll(model, tokenizer, TEXTS, batch_size=3, fast=False)
    fast = text_nll(model, tokenizer, TEXTS, batch_size=3, fast=True)
    assert [s.tokens for s in fast] == [s.tokens for s in plain]
    assert [s.nll for s in fast] == pytest.approx([s.nll for s in plain], rel=1e-5, abs=1e-6)
    assert [type(m) for m in model.modules()] == modules
    assert torch.get_num_threads() == threads


@given(st.lists(st.integers(1, 300), max_size=400), st.sampled_from([256, 4096]), st.integers(1, 4))
def test_token_batches_hold_each_row_once_within_budget_little_padding(widths, budget, workers):
    rows = sorted(((i, 0, w + 1, 1) for i, w in enumerate(widths)), key=lambda r: r[1] - r[2])
    batches = token_batches(rows, budget, workers)
    assert [r for batch in batches for r in batch] == rows  # in order, each once
    if rows and workers == 1:  # the first batch is as large as the budget allows: fails fast
        assert len(batches[0]) == min(len(rows), max(1, budget // (rows[0][2] - 1)))
    for batch in batches:
        width = batch[0][2] - 1
        padded = len(batch) * width
        padding = padded - sum(r[2] - 1 for r in batch)
        assert len(batch) == 1 or padded <= budget
        if batch is not batches[0]:
            assert len(batch) == 1 or padding <= max(PADDING_SLACK * padded, budget // 32)
    if workers > 1 and len(batches) > 2 * workers:  # the last batches are the smaller ones
        assert sum(r[2] - 1 for r in batches[-1]) <= max(budget // 8, batches[-1][0][2] - 1)


def test_cpu_workers_run_on_one_thread_each_and_leave_the_caller_alone():
    threads = torch.get_num_threads()
    seen = []
    openmp = "OpenMP" in torch.__config__.parallel_info()
    with cpu_workers() as (pool, count):
        # Workers exist wherever they can: several threads and OpenMP (the CI machine has both).
        assert (pool is not None) == (threads > 1 and openmp)
        if pool is None:
            return
        assert count == threads
        seen = list(pool.map(lambda _: (torch.get_num_threads(), threading.get_ident()), range(8)))
        assert torch.get_num_threads() == threads  # the calling thread, while they run
    assert {n for n, _ in seen} == {1}
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_output_layer_apart_equals_the_whole_model(micro_model, scale):
    """Scoring from the body's states with the output layer run by chunks changes nothing,
    with the log-sum-exp unshifted (small logits) or shifted by the maximum (large ones)."""
    model, tokenizer = load_model(micro_model, device="cpu")
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
        ids = torch.tensor([tokenizer("Hello there, how are you?")["input_ids"]])
        largest = model(input_ids=ids).logits.abs().max().item()
    assert (largest > 100) == (scale > 1)  # past the unshifted range (87 - ln vocabulary)
    arrays = [np.asarray(s) for s in encode_texts(tokenizer, TEXTS)]
    ids, labels, _ = batch_arrays(window_rows(arrays, None, 64, 64), arrays, None)
    whole = batch_nll(model, ids, labels)
    split = output_layer_split(model)
    assert split is not None
    with torch.inference_mode():
        ids_t, labels_t = torch.from_numpy(ids), torch.from_numpy(labels)
        apart = split_nll(split, ids_t, labels_t, 16, torch.nn.functional.linear)
    torch.testing.assert_close(apart, whole, rtol=1e-6, atol=1e-5)
