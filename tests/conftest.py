"""Shared fixtures: a micro base model built once per session, and system-package checks."""

from __future__ import annotations

import os
import shutil

import pytest

# As the CLI does: bitwise-reproducible MKL results in every process (exact resume).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def binary_or_skip(name: str) -> str:
    """Path of a system program; skip when it is missing, but fail under CI=true.

    CI installs every system package the tests need, so a missing one there is a broken
    install step, never a reason to pass by skipping.
    """
    path = shutil.which(name)
    if path:
        return path
    message = f"system program {name!r} is not installed (see .ci/run for the package)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def require_binary():
    return binary_or_skip


@pytest.fixture(scope="session")
def micro_workspace(tmp_path_factory):
    from evalkit.workspace import open_workspace

    return open_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def micro_model(micro_workspace):
    """The micro base model, trained once for the whole session (a few seconds)."""
    from finetune.base_model import build_base_model

    return build_base_model(micro_workspace, "micro")


@pytest.fixture(scope="session")
def topics_dataset(tmp_path_factory, micro_model):
    """The chatterbot topics, prepared with the micro model's tokenizer (short conversations)."""
    from evalkit.workspace import write_jsonl
    from finetune.data.corpora import load_topics
    from finetune.data.prepare import PrepareConfig, prepare

    tmp = tmp_path_factory.mktemp("topics")
    write_jsonl(load_topics(), tmp / "topics.jsonl")
    prepare([tmp / "topics.jsonl"], tmp / "ds", PrepareConfig(model=str(micro_model)))
    return tmp / "ds"


@pytest.fixture
def model_without_template(micro_model, tmp_path):
    """A copy of the micro model whose tokenizer has no chat template."""
    from transformers import AutoTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(micro_model, plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = None
    for file in plain.glob("*.jinja"):
        file.unlink()
    tokenizer.save_pretrained(plain)
    return plain


@pytest.fixture
def make_run():
    """A function that stores a run of one perplexity task ("t", three examples) without a
    model: ``make_run(con, name, status="complete", shift=0.0)``; ``shift`` raises its NLL."""
    from evalkit.results import ExampleResult, add_results, create_run, finish_run

    suite = {"tasks": [{"name": "t", "type": "perplexity", "dataset": "d"}]}

    def make(con, name, status="complete", shift=0.0):
        run_id = create_run(con, name=name, suite_name="s", suite_hash="h", suite=suite)
        rows = [
            ExampleResult(
                "t", f"e{i}", {"nll": 2.0 + i + shift, "tokens": 4, "words": 3, "bytes": 12}
            )
            for i in range(3)
        ]
        add_results(con, run_id, rows)
        if status != "running":
            finish_run(con, run_id, summary={}, status=status)
        return run_id

    return make


@pytest.fixture(scope="session")
def drift_cache(tmp_path_factory):
    """A drift folder (WORKSPACE/drift) with the topic classifier trained and the embeddings of
    the labelled prompts cached, built once: copy it into a workspace to skip the embedding."""
    from finetune.data.corpora import labelled_prompts
    from monitor.drift.job import open_featurizer

    folder = tmp_path_factory.mktemp("drift")
    open_featurizer(folder, labelled_prompts)
    return folder
