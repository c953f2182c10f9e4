import pytest

from evalkit.errors import EvalkitError
from evalkit.generation import CacheContext, Decoder, DecodingConfig, Row, generate
from evalkit.models import load_model
from evalkit.provenance import chat_template_fingerprint, model_hash

PROMPTS = [
    [{"role": "user", "content": text}]
    for text in (
        "hello",
        "how do I install a package?",
        "what is your name",
        "tell me about the weather today, it is raining a lot here",
        "hi",
        "do you like music?",
        "why is the sky blue",
    )
]
GREEDY = DecodingConfig(max_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=3)


@pytest.fixture(scope="module")
def loaded(micro_model):
    return load_model(micro_model)


def test_batched_greedy_equals_one_at_a_time_and_transformers(loaded):
    model, tokenizer = loaded
    batched = generate(model, tokenizer, PROMPTS, GREEDY, batch_size=4)
    single = generate(model, tokenizer, PROMPTS, GREEDY, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    for prompt, ours in zip(PROMPTS, single):
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(
            **inputs,
            max_new_tokens=12,
            do_sample=False,
            repetition_penalty=1.3,
            no_repeat_ngram_size=3,
        )
        new = out[0, inputs["input_ids"].shape[1] :]
        assert ours.tokens == len(new)
        assert ours.text == tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize(("penalty", "ngram"), [(1.3, 0), (1.0, 3), (1.3, 3), (0.7, 2), (1.2, 1)])
def test_repetition_on_all_rows_at_once_equals_transformers_row_by_row(loaded, penalty, ngram):
    """The fast path's batched repetition processors against transformers' processors applied
    to each row alone, over rows of different lengths (some shorter than the n-gram) that grow
    step by step with many repeated tokens; the logits themselves are left as they were."""
    import torch

    model, tokenizer = loaded
    config = DecodingConfig(repetition_penalty=penalty, no_repeat_ngram_size=ngram)
    batched = Decoder(model, tokenizer, config)
    reference = Decoder(model, tokenizer, config, fast=False).processors
    assert batched.batched
    draw = torch.Generator().manual_seed(0)
    rows = []
    for length in (1, 2, 5, 9):
        ids = torch.randint(0, 6, (length,), generator=draw)
        rows.append(Row(history=ids, generator=None, ids=ids.tolist()))
    for _ in range(12):
        logits = torch.randn(len(rows), 40, generator=draw)
        kept = logits.clone()
        want = torch.cat(
            [reference(r.history[None], logits[i : i + 1]) for i, r in enumerate(rows)]
        )
        assert torch.equal(batched._repetition(rows, logits), want)
        assert torch.equal(logits, kept)
        for row in rows:
            token = int(torch.randint(0, 6, (1,), generator=draw))
            row.history = torch.cat([row.history, torch.tensor([token])])
            row.ids.append(token)


def test_sampling_is_seeded_per_prompt_not_per_batch(loaded):
    model, tokenizer = loaded
    config = DecodingConfig(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    a = generate(model, tokenizer, PROMPTS, config, batch_size=3)
    b = generate(model, tokenizer, PROMPTS[::-1], config, batch_size=5)[::-1]
    assert a == b
    other = generate(model, tokenizer, PROMPTS, DecodingConfig(**{**config.__dict__, "seed": 8}))
    assert other != a


def test_stop_sequences_and_finish_reasons(loaded):
    model, tokenizer = loaded
    free = generate(model, tokenizer, PROMPTS, GREEDY)
    word = next(g.text.split()[1] for g in free if len(g.text.split()) > 2)
    stopped = generate(
        model, tokenizer, PROMPTS, DecodingConfig(max_new_tokens=12, stop=(word,), **_penalties())
    )
    for before, after in zip(free, stopped):
        assert word not in after.text
        if word in before.text:
            assert after.finish_reason == "stop"
            assert before.text.startswith(after.text)
    assert {g.finish_reason for g in free} <= {"stop", "length"}
    assert all(g.tokens <= 12 for g in free)


def _penalties():
    return {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}


def test_cache_reuses_generations_and_resumes_an_interrupted_run(
    loaded, micro_model, tmp_path, monkeypatch
):
    model, tokenizer = loaded
    context = CacheContext(
        tmp_path / "store.duckdb", model_hash(micro_model), chat_template_fingerprint(tokenizer)
    )
    import evalkit.generation as generation

    real = generation._generate_batch
    calls = []

    def dies_on_second_batch(*args):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(generation, "_generate_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(model, tokenizer, PROMPTS, GREEDY, batch_size=3, cache=context)
    monkeypatch.setattr(generation, "_generate_batch", real)

    resumed = generate(model, tokenizer, PROMPTS, GREEDY, batch_size=2, cache=context)
    assert context.hits == 3  # the first batch survived the interruption
    assert resumed == generate(model, tokenizer, PROMPTS, GREEDY)

    monkeypatch.setattr(generation, "_generate_batch", lambda *a: pytest.fail("regenerated"))
    context.hits = 0
    assert generate(model, tokenizer, PROMPTS, GREEDY, batch_size=5, cache=context) == resumed
    assert context.hits == len(PROMPTS)


def test_no_chat_template_is_an_error(model_without_template):
    model, tokenizer = load_model(model_without_template, require_chat_template=False)
    with pytest.raises(EvalkitError, match="chat template"):
        generate(model, tokenizer, PROMPTS[:1])


def test_bad_decoding_parameters():
    with pytest.raises(EvalkitError):
        DecodingConfig(max_new_tokens=0)
    with pytest.raises(EvalkitError):
        DecodingConfig(top_p=0)
