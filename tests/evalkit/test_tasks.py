"""Task types run on the micro model: what each one counts."""

from __future__ import annotations

import pytest
from lm_eval.api.task import ConfigurableTask

from evalkit.models import load_model
from evalkit.suite import TaskSpec
from evalkit.tasks import Example, RunContext, run_perplexity

CONVERSATIONS = {
    "one": [
        {"role": "user", "content": "Where is the manual?"},
        {"role": "assistant", "content": "Use the link."},
    ],
    "two": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello there, how are you?"},
        {"role": "user", "content": "fine"},
        {"role": "assistant", "content": "café, naïve  and 日本語 🙂"},
    ],
}


@pytest.fixture(scope="module")
def context(micro_model):
    model, tokenizer = load_model(micro_model)
    return RunContext(model, tokenizer, batch_size=4, cache=None, seed=0)


def test_conversation_words_and_bytes_are_the_replies_content(context):
    """Word and byte perplexity divide by lm-eval's counts of what the assistant said, not of
    the template's text around it (headers, end-of-turn tokens, newlines)."""
    examples = [Example(k, v, None, {}) for k, v in CONVERSATIONS.items()]
    results = run_perplexity(context, TaskSpec("p", "perplexity", "conv"), examples)
    for result, messages in zip(results, CONVERSATIONS.values()):
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert result.scores["words"] == sum(ConfigurableTask.count_words(r) for r in replies)
        assert result.scores["bytes"] == sum(ConfigurableTask.count_bytes(r) for r in replies)


def test_scope_all_counts_the_whole_rendering(context):
    """With every token scored, the counts are of the rendered conversation."""
    messages = CONVERSATIONS["one"]
    task = TaskSpec("p", "perplexity", "conv", {"scope": "all"})
    [result] = run_perplexity(context, task, [Example("one", messages, None, {})])
    tokenizer = context.tokenizer
    scored = tokenizer.decode(tokenizer.apply_chat_template(messages, return_dict=False)[1:])
    assert result.scores["words"] == ConfigurableTask.count_words(scored)
    assert result.scores["bytes"] == ConfigurableTask.count_bytes(scored)
