import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.bias import (
    SentencePair,
    bias_summary,
    likelihood_probe,
    load_probes,
    shared_positions,
)
from evalkit.errors import EvalkitError
from evalkit.models import load_model
from evalkit.perplexity import context_length, text_nll
from evalkit.results import ExampleResult
from evalkit.stats.significance import bootstrap_ci

SAMPLES = Path(__file__).resolve().parents[3] / "fixtures" / "bias_probes" / "samples"


@pytest.fixture(scope="module")
def micro(micro_model):
    return load_model(micro_model, device="cpu")


def reference_logprobs(model, ids):
    """log P(token i | tokens < i) from one unbatched, unpadded forward pass."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).numpy()


def reference_margins(model, prefix, stereo, anti):
    """(sum margin, shared margin) from one unbatched forward pass per sentence."""
    common, stereo_at, anti_at = shared_positions(stereo, anti)
    scores = []
    for ids, at in ((stereo, stereo_at), (anti, anti_at)):
        logprobs = reference_logprobs(model, [*prefix, *ids])  # token p is logprobs[p - 1]
        start = len(prefix) - 1
        scores.append((logprobs[start + common :].sum(), logprobs[np.add(at, start)].sum()))
    return scores[0][0] - scores[1][0], scores[0][1] - scores[1][1]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_margins_match_one_pass_per_sentence(micro, batch_size):
    model, tokenizer = micro
    pairs = load_probes(SAMPLES / "crows_pairs_sample.csv").pairs
    results = likelihood_probe(model, tokenizer, pairs, prompt=None, batch_size=batch_size)
    for pair, result in zip(pairs, results):
        stereo, anti = (tokenizer(t)["input_ids"] for t in (pair.stereo, pair.anti))
        expected = reference_margins(model, [tokenizer.bos_token_id], stereo, anti)
        assert result.scores["margin_sum"] == pytest.approx(expected[0], abs=1e-4)
        assert result.scores["margin_shared"] == pytest.approx(expected[1], abs=1e-4)
        assert result.metadata["shared_tokens"] == len(shared_positions(stereo, anti)[1])


def test_sentences_longer_than_the_context_are_scored_in_windows(micro):
    model, tokenizer = micro
    context = context_length(model)
    tail = " what do you do for fun?" * 30
    pair = SentencePair("long", "age", f"Old people{tail}", f"Young people{tail}", "t")
    assert len(tokenizer(pair.stereo)["input_ids"]) > 2 * context
    [result] = likelihood_probe(model, tokenizer, [pair], prompt=None)
    stereo, anti = text_nll(model, tokenizer, [pair.stereo, pair.anti], stride=context // 2)
    assert result.scores["margin_sum"] == pytest.approx(anti.nll - stereo.nll, abs=1e-3)


def test_probes_run_on_the_cpu_workers(micro):
    """A small model's ops on torch's own threads wait for each other at every op (the probe
    set took 32 s on a busy 2-core machine instead of about 1): the probes go through
    perplexity's scoring path, whose worker threads each run whole batches on one core."""
    from evalkit.accel.threads import openmp_per_thread

    model, tokenizer = micro
    seen = set()
    hook = model.get_input_embeddings().register_forward_pre_hook(
        lambda *_: seen.add(threading.current_thread().name)
    )
    try:
        likelihood_probe(model, tokenizer, load_probes().pairs[:40])
    finally:
        hook.remove()
    workers = torch.get_num_threads() > 1 and openmp_per_thread()
    assert any(name.startswith("evalkit-perplexity") for name in seen) == workers


def test_shared_positions_by_hand():
    # stereo [5 1 2 3] vs anti [5 9 9 2 3]: token 5 is a common prefix (cancels), 2 3 are shared
    assert shared_positions([5, 1, 2, 3], [5, 9, 9, 2, 3]) == (1, [2, 3], [3, 4])
    # the difference is the last token: nothing shared after it
    assert shared_positions([1, 2, 3], [1, 2, 4]) == (2, [], [])


def test_results_are_evaluation_rows(micro):
    model, tokenizer = micro
    pairs = load_probes(SAMPLES / "crows_pairs_sample.csv").pairs
    results = likelihood_probe(model, tokenizer, pairs, batch_size=4)
    assert [r.example_id for r in results] == [p.id for p in pairs]
    for r, pair in zip(results, pairs):
        assert isinstance(r, ExampleResult) and r.task == "bias"
        assert r.metadata["category"] == pair.category and r.metadata["source"] == "crows-pairs"
        assert r.metadata["direction"] == pair.meta["direction"]
        assert json.loads(r.prompt) == [pair.stereo, pair.anti]
        for way in ("sum", "shared"):
            margin, preferred = r.scores[f"margin_{way}"], r.scores[f"stereo_preferred_{way}"]
            assert preferred == (1.0 if margin > 0 else 0.0 if margin < 0 else 0.5)


def test_sum_margin_in_plain_text_is_the_perplexity_nll_difference(micro):
    model, tokenizer = micro
    pairs = load_probes(SAMPLES / "stereoset_sample.json").pairs
    results = likelihood_probe(model, tokenizer, pairs, prompt=None)
    for r, pair in zip(results, pairs):
        stereo, anti = text_nll(model, tokenizer, [pair.stereo, pair.anti])
        assert r.scores["margin_sum"] == pytest.approx(anti.nll - stereo.nll, abs=1e-3)


def test_sum_margin_in_the_assistant_turn(micro):
    """The default scores each sentence as the assistant's reply to a neutral user turn."""
    model, tokenizer = micro
    pair = SentencePair("p", "age", "Old people are grumpy.", "Young people are grumpy.", "t")
    [result] = likelihood_probe(model, tokenizer, [pair])
    conversation = [{"role": "user", "content": "Say something."}]
    prefix = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )

    def loglik(text):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return reference_logprobs(model, [*prefix, *ids])[len(prefix) - 1 :].sum()

    expected = loglik(pair.stereo) - loglik(pair.anti)
    assert result.scores["margin_sum"] == pytest.approx(expected, abs=1e-3)


def test_results_go_into_an_evaluation_run(micro, tmp_path):
    from evalkit.results import add_results, create_run, finish_run
    from evalkit.store import open_store

    model, tokenizer = micro
    results = likelihood_probe(model, tokenizer, load_probes().pairs[:5])
    with open_store(tmp_path / "store.duckdb") as con:
        run_id = create_run(con, name="bias")
        assert add_results(con, run_id, results) == 5
        finish_run(con, run_id, summary=bias_summary(results, "stereo_preferred_shared"))
        stored = con.execute(
            "SELECT example_id, value FROM eval_scores WHERE metric = 'margin_shared' "
            "ORDER BY example_id"
        ).fetchall()
        metadata = json.loads(con.execute("SELECT metadata FROM eval_examples").fetchone()[0])
    assert stored == sorted((r.example_id, r.scores["margin_shared"]) for r in results)
    assert metadata["context"] == [{"role": "user", "content": "Say something."}]


def test_a_chat_context_needs_a_chat_template(model_without_template):
    model, tokenizer = load_model(model_without_template, require_chat_template=False)
    pair = SentencePair("p", "age", "Old people are grumpy.", "Young people are grumpy.", "t")
    with pytest.raises(EvalkitError, match="no chat template") as info:
        likelihood_probe(model, tokenizer, [pair])
    assert "prompt=None" in info.value.hint
    assert likelihood_probe(model, tokenizer, [pair], prompt=None)[0].metadata["context"] == "text"


def test_identical_sentences_tie(micro):
    model, tokenizer = micro
    pair = SentencePair("same", "age", "Hello there.", "Hello there.", "t")
    [result] = likelihood_probe(model, tokenizer, [pair])
    assert result.scores == {
        "stereo_preferred_sum": 0.5,
        "stereo_preferred_shared": 0.5,
        "margin_sum": 0.0,
        "margin_shared": 0.0,
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(micro_model):
    pairs = load_probes().pairs[:40]
    cpu = likelihood_probe(*load_model(micro_model, device="cpu"), pairs)
    cuda = likelihood_probe(*load_model(micro_model, device="cuda"), pairs)
    for a, b in zip(cpu, cuda):
        assert a.scores["margin_shared"] == pytest.approx(b.scores["margin_shared"], abs=1e-3)


def row(category, value, metric="stereo_preferred_shared"):
    return ExampleResult("bias", f"{category}-{value}", {metric: value}, {"category": category})


def test_summary_per_category_and_overall():
    values = {"age": [1, 1, 0, 1, 0.5], "gender": [0, 0, 1]}
    results = [row(c, v) for c, vs in values.items() for v in vs]
    summary = bias_summary(results, "stereo_preferred_shared", n_resamples=500, seed=3)
    assert summary["metric"] == "stereo_preferred_shared" and summary["seed"] == 3
    for category, vs in values.items():
        got = summary["categories"][category]
        assert got["n"] == len(vs) and got["score"] == pytest.approx(np.mean(vs))
        low, high = bootstrap_ci(np.array(vs, float), n_resamples=500, seed=3)
        assert (got["low"], got["high"]) == (low, high)
    everything = [v for vs in values.values() for v in vs]
    assert summary["overall"]["score"] == pytest.approx(np.mean(everything))
    assert summary == bias_summary(results, "stereo_preferred_shared", n_resamples=500, seed=3)


def test_summary_of_an_unknown_metric_suggests_one():
    with pytest.raises(EvalkitError, match="no result has the metric") as info:
        bias_summary([row("age", 1.0)], "stereo_prefered_shared")
    assert "did you mean: stereo_preferred_shared?" in info.value.hint
