import math
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from evalkit.models import load_model
from evalkit.perplexity import (
    bits_per_byte,
    byte_perplexity,
    context_length,
    encode_texts,
    rolling_windows,
    sequence_nll,
    text_nll,
    token_perplexity,
    word_perplexity,
)


@given(st.integers(0, 400), st.integers(1, 64), st.data())
def test_windows_score_every_position_once_within_the_context(n, max_length, data):
    stride = data.draw(st.integers(1, max_length))
    scored = []
    for begin, end, first in rolling_windows(n, max_length, stride):
        assert end - 1 - begin <= max_length  # the model reads begin .. end - 2
        assert begin < first < end  # every scored position has a context position before it
        assert end - first <= stride or begin == 0
        scored.extend(range(first, end))
    assert scored == list(range(1, n))


def test_windows_are_lm_evals_disjoint_windows():
    """lm-eval: the first window scores max_length tokens, each next one up to max_length."""
    # 10 positions = the prefix and 9 tokens; context 4.
    assert rolling_windows(10, 4, 4) == [(0, 5, 1), (4, 9, 5), (5, 10, 9)]
    assert rolling_windows(5, 4, 4) == [(0, 5, 1)]


def test_stride_must_be_within_the_context():
    for stride in (0, 9):
        with pytest.raises(ValueError):
            rolling_windows(10, 8, stride)


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


TEXTS = [
    "hello there, how are you?",
    "I like dogs.\nDo you?",
    "ok",
    "what do you do for fun? i like to go hiking with my dog on weekends, and you? " * 6,
    "",
    "so tell me about your week, anything fun happen? " * 3,
]


def test_encoding_puts_the_prefix_first_and_keeps_a_leading_prefix_string(micro_model):
    _, tokenizer = load_model(micro_model, device="cpu")
    bos = tokenizer.bos_token_id
    plain, leading, empty = encode_texts(tokenizer, ["hi there", "<|endoftext|>hi there", ""])
    assert plain == [bos, *tokenizer("hi there", add_special_tokens=False)["input_ids"]]
    assert leading == [bos, *plain]  # the text's own BOS is a token to score, as in lm-eval
    assert empty == [bos]


def test_texts_encode_as_the_tokenizer_encodes_them(micro_model, monkeypatch):
    _, tokenizer = load_model(micro_model, device="cpu")
    texts = ["", "hi there", "two  spaces\nand a line", "<|endoftext|> in <|endoftext|>", "é ü"]
    expected = [[tokenizer.bos_token_id, *ids] for ids in tokenizer(texts)["input_ids"]]
    expected[3] = [tokenizer.bos_token_id, *tokenizer(texts[3], add_special_tokens=False).input_ids]
    calls = []
    call = type(tokenizer).__call__

    def counted(self, text, **kwargs):
        calls.append(len(text))
        return call(self, text, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counted)
    assert encode_texts(tokenizer, texts) == expected
    assert max(calls) <= 2  # the Rust tokenizer encoded them, checked on two texts
    # Settings left on the Rust tokenizer do not leak in: the ids are the tokenizer call's.
    tokenizer.backend_tokenizer.enable_truncation(2)
    tokenizer.backend_tokenizer.enable_padding(length=40)
    assert encode_texts(tokenizer, texts) == expected


def test_a_tokenizer_that_changes_texts_in_python_encodes_by_its_own_call(micro_model):
    _, tokenizer = load_model(micro_model, device="cpu")

    class Lowercasing(type(tokenizer)):
        def _encode_plus(self, text, *args, **kwargs):
            lower = [t.lower() for t in text] if isinstance(text, list) else text.lower()
            return super()._encode_plus(lower, *args, **kwargs)

    tokenizer.__class__ = Lowercasing
    texts = ["", "hello", "world there", "Hello World"]  # the first give the same ids either way
    bos = tokenizer.bos_token_id
    assert encode_texts(tokenizer, texts)[3] == [bos, *tokenizer("hello world").input_ids]


@pytest.mark.parametrize("fast", [False, True])
def test_batch_size_and_padding_do_not_change_the_result(micro_model, fast):
    model, tokenizer = load_model(micro_model, device="cpu")
    one = text_nll(model, tokenizer, TEXTS, batch_size=1, fast=fast)
    many = text_nll(model, tokenizer, TEXTS, batch_size=4, fast=fast)
    assert [s.tokens for s in one] == [s.tokens for s in many]
    assert [s.nll for s in many] == pytest.approx([s.nll for s in one], rel=1e-5, abs=1e-6)
    assert one[4].nll == 0 and one[4].tokens == 0  # nothing to score in an empty text
    assert context_length(model, tokenizer) == 64


def _per_token_nll(model, seq, max_length, stride):
    """-log p of each position given its window, one window per forward pass, no padding."""
    nll = {}
    with torch.inference_mode():
        for begin, end, first in rolling_windows(len(seq), max_length, stride):
            logits = model(input_ids=torch.tensor([seq[begin : end - 1]])).logits[0]
            logprobs = torch.log_softmax(logits.double(), dim=-1)
            for p in range(first, end):
                nll[p] = -logprobs[p - begin - 1, seq[p]].item()
    return nll


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("stride", [None, 16])
def test_target_masks_score_only_the_marked_positions(micro_model, stride, fast):
    model, tokenizer = load_model(micro_model, device="cpu")
    sequences = encode_texts(tokenizer, TEXTS)
    assert max(map(len, sequences)) > 2 * 64  # some go through several windows
    rng = random.Random(0)
    masks = [[rng.random() < 0.4 for _ in seq] for seq in sequences]
    masks[0] = [True] * len(sequences[0])  # all: the unmasked result, the prefix still unscored
    masks[1] = [False] * len(sequences[1])  # none
    scores = sequence_nll(
        model, sequences, max_length=64, stride=stride, batch_size=3, target_masks=masks, fast=fast
    )
    for seq, mask, (nll, count) in zip(sequences, masks, scores):
        per_token = _per_token_nll(model, seq, 64, stride or 64)
        marked = [p for p in range(1, len(seq)) if mask[p]]
        assert count == len(marked)
        assert nll == pytest.approx(sum(per_token[p] for p in marked), rel=1e-5, abs=1e-5)
    assert scores[0] == pytest.approx(sequence_nll(model, sequences[:1], max_length=64)[0])
    assert scores[1] == (0.0, 0)


def test_target_masks_must_match_the_sequences(micro_model):
    model, _ = load_model(micro_model, device="cpu")
    with pytest.raises(ValueError, match="entries"):
        sequence_nll(model, [[0, 5, 6]], max_length=64, target_masks=[[True, True]])
    with pytest.raises(ValueError, match="one each"):
        sequence_nll(model, [[0, 5, 6]], max_length=64, target_masks=[])


def test_bf16_autocast_stays_close(micro_model):
    """The optional autocast (meant for CUDA) runs here too and changes little."""
    model, tokenizer = load_model(micro_model, device="cpu")
    exact = text_nll(model, tokenizer, TEXTS[:4])
    fast = text_nll(model, tokenizer, TEXTS[:4], autocast_dtype=torch.bfloat16)
    assert [s.nll for s in fast] == pytest.approx([s.nll for s in exact], rel=0.05)


def test_a_model_that_changes_its_logits_is_scored_whole(micro_model):
    """Scaled logits (as Granite's ``logits_scaling``) are not the output layer's."""
    model, tokenizer = load_model(micro_model, device="cpu")
    plain = text_nll(model, tokenizer, TEXTS[:4])
    forward = model.forward

    def scaled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits / 2.0
        return out

    model.forward = scaled
    sequences = encode_texts(tokenizer, TEXTS[:4])
    scores = sequence_nll(model, sequences, max_length=64)  # the fast path checks itself
    for seq, (nll, count) in zip(sequences, scores):
        per_token = _per_token_nll(model, seq, 64, 64)
        assert count == len(seq) - 1
        assert nll == pytest.approx(sum(per_token.values()), rel=1e-5)
    assert scores[0][0] != pytest.approx(plain[0].nll, rel=0.01)


def test_module_entry_prints_the_aggregates(micro_model, tmp_path, capsys):
    import json

    from evalkit.perplexity import main

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    main([str(micro_model), str(data), "--field", "body", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    model, tokenizer = load_model(micro_model, device="cpu")
    scores = text_nll(model, tokenizer, TEXTS)
    nll, words, nbytes = ([getattr(s, f) for s in scores] for f in ("nll", "words", "bytes"))
    assert printed["texts"] == len(TEXTS)
    assert printed["tokens"] == sum(s.tokens for s in scores)
    assert printed["word_perplexity"] == pytest.approx(word_perplexity(nll, words))
    assert printed["bits_per_byte"] == pytest.approx(bits_per_byte(nll, nbytes))
