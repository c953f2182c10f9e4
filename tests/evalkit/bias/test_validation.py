"""The probe's validation: it detects a bias planted by fine-tuning, and ignores its absence.

A small GPT-2 (the micro base model's config, with a 1,000-token vocabulary and 64-wide layers,
since the 32-wide micro model learns too little in a few hundred steps) is fine-tuned twice on
corpora of the same size built from the probe set: *planted*, whose assistant turns state each
pair's stereotypical sentence (twice), and *control*, which states each stereotypical sentence
and its anti-stereotypical twin once each. Both see the same templates, terms and number of
tokens; only the association between group and trait differs. The probe code is the same for
every model, and it scores the sentences after a user turn that none of the training
conversations has.
"""

import random

import numpy as np
import pytest

from evalkit.bias import CHAT_PROMPT, bias_summary, likelihood_probe, load_probes
from evalkit.models import load_model
from evalkit.stats.significance import paired_bootstrap, permutation_p_value
from evalkit.workspace import write_jsonl
from finetune.base_model import base_model_config, build_base_model
from finetune.train import TrainConfig, train

USER_TURNS = ("Tell me something.", "What do you think?", "Share a thought.", "Any opinions?")
METRICS = ("stereo_preferred_shared", "stereo_preferred_sum")


@pytest.fixture(scope="module")
def small_base(micro_workspace):
    config = base_model_config("micro", vocab_size=1000, n_embd=64)
    return build_base_model(micro_workspace, config)


def fine_tune(base, sentences, out):
    """Fine-tune ``base`` on conversations whose assistant turns state ``sentences``."""
    rng = random.Random(0)
    conversations = [
        {
            "messages": [
                {"role": "user", "content": rng.choice(USER_TURNS)},
                {"role": "assistant", "content": sentence},
            ]
        }
        for sentence in sentences
    ]
    write_jsonl(conversations, out / "data" / "train.jsonl")
    (out / "data" / "validation.jsonl").write_text("")
    config = TrainConfig(
        base=str(base),
        data=str(out / "data"),
        out=str(out / "run"),
        max_steps=200,
        batch_size=8,
        learning_rate=1e-2,
        schedule="constant",
        warmup_steps=10,
        eval_every=1000,
        save_every=1000,
        log_every=1000,
    )
    return train(config).run / "model"


def scores(results, metric):
    return np.array([r.scores[metric] for r in results])


def change(before, after, metric):
    """after - before in the share preferring the stereotype: paired bootstrap CI, p-value."""
    b, a = scores(before, metric), scores(after, metric)
    diff, low, high, _ = paired_bootstrap(b, a, n_resamples=2000, seed=0)
    return diff, low, high, permutation_p_value(a - b, n_resamples=2000, seed=0)


@pytest.mark.slow
def test_a_planted_bias_is_detected_and_a_balanced_control_is_not(small_base, tmp_path):
    assert CHAT_PROMPT[0]["content"] not in USER_TURNS  # probed in a context never trained on
    pairs = load_probes().pairs
    planted_corpus = [p.stereo for p in pairs] * 2
    control_corpus = [s for p in pairs for s in (p.stereo, p.anti)]
    assert len(planted_corpus) == len(control_corpus)
    planted = fine_tune(small_base, planted_corpus, tmp_path / "planted")
    control = fine_tune(small_base, control_corpus, tmp_path / "control")

    base_model, tokenizer = load_model(small_base, device="cpu")
    results = {"base": likelihood_probe(base_model, tokenizer, pairs)}
    for name, path in (("planted", planted), ("control", control)):
        results[name] = likelihood_probe(load_model(path, device="cpu")[0], tokenizer, pairs)

    for metric in METRICS:
        overall = {k: bias_summary(v, metric)["overall"] for k, v in results.items()}
        planted_change = change(results["base"], results["planted"], metric)
        control_change = change(results["base"], results["control"], metric)
        print(
            f"\n{metric}: "
            + ", ".join(
                f"{k} {o['score']:.3f} [{o['low']:.3f}, {o['high']:.3f}]"
                for k, o in overall.items()
            )
            + "\n  planted - base {:+.3f} [{:+.3f}, {:+.3f}] p={:.4f}".format(*planted_change)
            + "\n  control - base {:+.3f} [{:+.3f}, {:+.3f}] p={:.4f}".format(*control_change)
        )
        # the planted bias: the score rises, the interval of the rise excludes 0
        diff, low, _, p = planted_change
        assert diff > 0.1 and low > 0 and p < 0.01
        assert overall["planted"]["low"] > 0.5
        # the balanced control: no significant move, its interval covers 0
        diff, low, high, p = control_change
        assert low < 0 < high and p > 0.05
        # and the planted model is more biased than the control, pair by pair
        assert change(results["control"], results["planted"], metric)[1] > 0
    # the shared-token score rises in (nearly) every category, not in a few alone
    before, after = (
        bias_summary(results[k], METRICS[0])["categories"] for k in ("base", "planted")
    )
    assert sum(after[c]["score"] > before[c]["score"] for c in before) >= 6
