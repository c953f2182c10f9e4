import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from evalkit.models import load_model
from evalkit.perplexity import (
    bits_per_byte,
    byte_perplexity,
    rolling_windows,
    text_nll,
    token_perplexity,
    word_perplexity,
)


@given(st.integers(0, 400), st.integers(2, 64), st.data())
def test_windows_score_every_position_once_within_the_context(n, max_length, data):
    stride = data.draw(st.integers(1, max_length - 1))
    scored = []
    for begin, end, first in rolling_windows(n, max_length, stride):
        assert end - begin <= max_length
        assert begin < first <= end  # every scored position has a context position before it
        scored.extend(range(first, end))
    assert scored == list(range(1, n))


def test_stride_must_leave_context():
    with pytest.raises(ValueError):
        rolling_windows(10, 8, 8)


def _reference_nll(model, ids):
    """Sum of -log p(token | all previous tokens), straight from the model's own loss."""
    with torch.inference_mode():
        ids = torch.tensor([ids])
        loss = model(input_ids=ids, labels=ids).loss.item()
    return loss * (ids.shape[1] - 1)


def test_short_texts_match_the_models_own_loss(micro_model):
    model, tokenizer = load_model(micro_model, device="cpu")
    texts = ["hello there, how are you?", "I like dogs.\nDo you?", "ok"]
    scores = text_nll(model, tokenizer, texts, batch_size=2)
    for text, score in zip(texts, scores):
        ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        assert score.tokens == len(ids) - 1
        assert score.nll == pytest.approx(_reference_nll(model, ids), rel=1e-4)
        assert score.bytes == len(text.encode())


def test_long_text_with_full_overlap_equals_one_pass(micro_model):
    """With stride 1 every token sees the whole window; with a text that fits, that is one pass."""
    model, tokenizer = load_model(micro_model, device="cpu")
    text = "what do you do for fun? i like to go hiking with my dog on weekends"
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    n = len(ids)
    [whole] = text_nll(model, tokenizer, [text], max_length=n)
    [windowed] = text_nll(model, tokenizer, [text], max_length=n // 2 + 1, stride=3)
    assert whole.nll == pytest.approx(_reference_nll(model, ids), rel=1e-4)
    assert windowed.tokens == whole.tokens
    # Less context can only be worse on average, but it is a different number: not equal.
    assert windowed.nll != pytest.approx(whole.nll, rel=1e-6)


def test_aggregates_follow_the_lm_eval_definitions():
    nll, tokens, words, nbytes = [2.0, 4.0], [2, 3], [1, 2], [8, 12]
    assert token_perplexity(nll, tokens) == pytest.approx(math.exp(6 / 5))
    assert word_perplexity(nll, words) == pytest.approx(math.exp(6 / 3))
    assert byte_perplexity(nll, nbytes) == pytest.approx(math.exp(6 / 20))
    assert bits_per_byte(nll, nbytes) == pytest.approx(6 / 20 / math.log(2))
