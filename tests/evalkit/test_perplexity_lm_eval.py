"""Parity with lm-evaluation-harness: evalkit's perplexity is its ``loglikelihood_rolling``.

lm-eval itself runs here (its ``hf`` model on the CPU, a local task over a JSONL file, no
network) on the micro model, and its aggregates and every per-text log-likelihood must equal
evalkit's within 1e-5 relative (the bar is 1e-4). The texts include some several times longer
than the micro model's 64-token context, so the rolling windows are compared too, and the micro
model is run with its own tokenizer (no BOS added) and with one that adds a BOS (as Llama's).
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from string import Template

import pytest

from evalkit.models import load_model
from evalkit.perplexity import (
    bits_per_byte,
    byte_perplexity,
    context_length,
    text_nll,
    word_perplexity,
)

# The task, shared with benchmarks/bench_perplexity.py; its file name is the task's name.
TASK_YAML = Path(__file__).resolve().parents[2] / "fixtures" / "lm_eval" / "evalkit_ppl.yaml"
TASK = TASK_YAML.stem
# The bar is 1e-4; the two agree to about 1e-7 (both float32). 1e-5 keeps a wide margin and
# still catches a window off by one token, which moves this weak model's NLLs by about 2e-4.
REL = 1e-5


def _texts() -> list[str]:
    """Chit-chat turns, whole conversations (long: several windows) and edge cases."""
    from finetune.data.corpora import load_chitchat

    conversations = load_chitchat()[:60]
    turns = [m["content"] for c in conversations[:30] for m in c["messages"]][:120]
    long = ["\n".join(m["content"] for m in c["messages"]) for c in conversations[30:45]]
    return [
        *turns,
        *long,
        "\n\n".join(long[:3]),  # about ten windows
        "<|endoftext|>hello there, how are you?",  # starts with the prefix: no special tokens
        "ok",
        "  two  spaces \t and a tab \n",
        "café, naïve, 日本語 and an emoji 🙂",
    ]


def _with_bos_tokenizer(model_dir, out):
    """A copy of the model whose tokenizer adds a BOS to every encoding."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    shutil.copytree(model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{tokenizer.bos_token} $A",
        special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)],
    )
    tokenizer.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out)("hi")["input_ids"][0] == tokenizer.bos_token_id
    return out


def _run_lm_eval(model_dir, texts, tmp_path):
    """lm-eval's results and per-document log-likelihoods for the texts, via simple_evaluate."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task = Template(TASK_YAML.read_text()).substitute(data=data, cache=tmp_path / "hf-datasets")
    (tasks / TASK_YAML.name).write_text(task)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": "float32"},
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        device="cpu",
        batch_size=32,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    return results["results"][TASK], samples


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails at once; no git call from lm-eval either."""
    import lm_eval.evaluator

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # lm-eval records the git commit of the working directory; it has nothing to do with us.
    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", lambda: None)


@pytest.mark.parametrize("tokenizer", ["own", "adds_bos"])
def test_perplexity_equals_lm_eval(micro_model, tmp_path, offline, tokenizer):
    model_dir = micro_model
    if tokenizer == "adds_bos":
        model_dir = _with_bos_tokenizer(micro_model, tmp_path / "model")
    texts = _texts()
    model, tok = load_model(model_dir, device="cpu")
    encoded = [len(tok(t)["input_ids"]) for t in texts]
    context = context_length(model, tok)
    assert max(encoded) > 8 * context and sum(n > context for n in encoded) >= 10

    theirs, samples = _run_lm_eval(model_dir, texts, tmp_path)
    ours = text_nll(model, tok, texts)

    assert [s["doc"]["text"] for s in samples] == texts
    for text, sample, score in zip(texts, samples, ours):
        their_nll = -sample["resps"][0][0]
        assert score.nll == pytest.approx(their_nll, rel=REL, abs=1e-6), text[:60]
        assert (-score.nll, score.words) == pytest.approx(sample["word_perplexity"], rel=REL)
        assert (-score.nll, score.bytes) == pytest.approx(sample["byte_perplexity"], rel=REL)
    nll = [s.nll for s in ours]
    assert word_perplexity(nll, [s.words for s in ours]) == pytest.approx(
        theirs["word_perplexity,none"], rel=REL
    )
    assert byte_perplexity(nll, [s.bytes for s in ours]) == pytest.approx(
        theirs["byte_perplexity,none"], rel=REL
    )
    assert bits_per_byte(nll, [s.bytes for s in ours]) == pytest.approx(
        theirs["bits_per_byte,none"], rel=REL
    )
