"""The fast running batch (one cache slot per row) against transformers' own forward pass."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from evalkit.accel.decoding import SlotCache, supports
from evalkit.accel.layers import same_within_rounding
from evalkit.generation import Decoder, DecodingConfig, PlainCache, generate, render
from evalkit.models import load_model
from finetune.data.corpora import load_support_faq

# the first user turns of the support FAQ, and a chit-chat greeting (prompts of many lengths)
QUESTIONS = [c["messages"][0]["content"] for c in load_support_faq()[:7]] + ["hi"]
CONVERSATIONS = [[{"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def loaded(micro_model):
    return load_model(micro_model)


def _full_logits(model, tokens: list[int]) -> torch.Tensor:
    """transformers' logits of the next token after ``tokens``, with no cache at all."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokens])).logits[0, -1].float()


def test_rows_that_join_leave_and_reuse_slots_get_the_logits_of_a_full_forward(loaded):
    model, tokenizer = loaded
    assert supports(model)
    prompts = render(model, tokenizer, CONVERSATIONS, DecodingConfig(max_new_tokens=8))
    rows: list[list[int]] = []  # each live row's tokens so far, in the cache's row order
    with torch.inference_mode():
        cache = SlotCache(model, slots=2)  # grows as rows join

        def check(logits):
            assert logits.shape[0] == len(rows)
            for row, got in zip(rows, logits, strict=True):
                assert same_within_rounding(got, _full_logits(model, row))

        def step(logits):
            tokens = logits.argmax(-1).tolist()
            for row, token in zip(rows, tokens):
                row.append(token)
            return cache.step(tokens)

        rows += [list(p) for p in prompts[:3]]
        logits = cache.prefill(prompts[:3])
        check(logits)
        for _ in range(3):
            logits = step(logits)
            check(logits)
        cache.keep([0, 2])  # the middle row leaves: its slot is free again
        rows, logits = [rows[0], rows[2]], logits[[0, 2]]
        rows += [list(p) for p in prompts[3:7]]
        logits = torch.cat([logits, cache.prefill(prompts[3:7])])  # one takes the freed slot
        check(logits)
        assert sorted(cache.rows) == list(range(6))
        for _ in range(4):
            logits = step(logits)
            check(logits)
        cache.keep([5, 1])  # and in another order
        rows, logits = [rows[5], rows[1]], logits[[5, 1]]
        logits = step(logits)
        check(logits)


@pytest.mark.parametrize(
    "config",
    [
        DecodingConfig(max_new_tokens=10),
        DecodingConfig(max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=3),
        DecodingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3),
    ],
    ids=["greedy", "penalties", "sampled"],
)
def test_generation_is_the_same_on_the_fast_and_the_plain_path(loaded, config):
    model, tokenizer = loaded
    fast = generate(model, tokenizer, CONVERSATIONS, config, batch_size=3, fast=True)
    plain = generate(model, tokenizer, CONVERSATIONS, config, batch_size=3, fast=False)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert [g.tokens for g in fast] == [g.tokens for g in plain]
    assert [g.nll for g in fast] == pytest.approx([g.nll for g in plain], rel=1e-4)


def test_the_switch_picks_the_running_batch(loaded):
    model, tokenizer = loaded
    prompts = render(model, tokenizer, CONVERSATIONS[:2], DecodingConfig(max_new_tokens=8))
    for fast, kind in ((True, SlotCache), (False, PlainCache)):
        decoder = Decoder(model, tokenizer, DecodingConfig(), fast=fast)
        decoder.add(prompts, [0, 0])
        assert type(decoder.batch) is kind


def test_models_it_does_not_compute_exactly_take_the_plain_path(loaded):
    model, tokenizer = loaded
    scaled = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                   scale_attn_by_inverse_layer_idx=True)
    ).eval()  # fmt: skip
    assert not supports(scaled)
    assert not supports(model.train())
    model.eval()
    decoder = Decoder(scaled, tokenizer, DecodingConfig(max_new_tokens=2), fast=True)
    decoder.add([[1, 2, 3]], [0])
    assert type(decoder.batch) is PlainCache
