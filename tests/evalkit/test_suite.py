"""Suite files: every mistake is an error that names the file and the key, before any model
work, never a default silently used."""

import json

import pytest

from evalkit.errors import EvalkitError
from evalkit.generation import DecodingConfig
from evalkit.suite import load_examples, load_suite

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
] * 2


def _suite(tmp_path, task: str, top: str = "", dataset: str = ""):
    (tmp_path / "conv.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    path = tmp_path / "suite.toml"
    datasets = f'[datasets.conv]\npath = "conv.jsonl"\n{dataset}\n'
    path.write_text(f'{top}\n{datasets}[[tasks]]\ndataset = "conv"\n{task}')
    return path


@pytest.mark.parametrize(
    ("task", "top", "dataset", "message"),
    [
        (
            'type = "generation"\nmax_tokens = 8',
            "",
            "",
            "(?s)'max_tokens'.*mean: max_new_tokens",
        ),
        ('type = "generation"\nmetrics = ["blue"]', "", "", "metrics"),
        ('type = "generation"\nmax_new_tokens = "32"', "", "", "max_new_tokens '32'"),
        ('type = "generation"\nstop = 5', "", "", "stop 5"),
        ('type = "perplexity"\nscope = "everything"', "", "", "scope 'everything'"),
        ('type = "perplexity"\nstride = -5', "", "", "stride -5"),
        ('type = "perplexity"', 'seed = "x"', "", "seed 'x'"),
        ('type = "perplexity"', "", 'limit = "ten"', "limit 'ten'"),
        ('type = "perplexity"', "", "limit = 0", "limit 0"),
        # a typo anywhere is named, with the key meant
        ('type = "perplexity"', "sed = 1", "", "(?s)unknown key 'sed'.*did you mean: seed"),
        ('type = "perplexity"', "", "limt = 30", "(?s)unknown key 'limt'.*did you mean: limit"),
        (
            'type = "perplexity"\nstrde = 3',
            "",
            "",
            "(?s)perplexity key 'strde'.*mean: stride",
        ),
        (
            'type = "perplexty"',
            "",
            "",
            "(?s)task type 'perplexty'.*mean: perplexity",
        ),
    ],
)
def test_a_bad_key_or_value_is_named(tmp_path, task, top, dataset, message):
    with pytest.raises(EvalkitError, match=message) as info:
        load_suite(_suite(tmp_path, task, top, dataset))
    assert str(tmp_path / "suite.toml") in str(info.value)


def test_tasks_must_be_tables(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text('tasks = "x"\n')
    with pytest.raises(EvalkitError, match="tasks must be"):
        load_suite(path)


def test_a_single_stop_string_is_one_stop_sequence(tmp_path):
    suite = load_suite(_suite(tmp_path, 'type = "generation"\nstop = "the"'))
    assert suite.tasks[0].params["stop"] == "the"
    assert DecodingConfig(stop="the").stop == ("the",)
    assert DecodingConfig(stop=["a", "b"]).stop == ("a", "b")


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    suite = load_suite(_suite(tmp_path, 'type = "perplexity"'))
    (tmp_path / "conv.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(EvalkitError, match="line 2 is not UTF-8"):
        load_examples(suite.datasets["conv"])
