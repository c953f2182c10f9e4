"""Suite files: every mistake is an error that names the file and the key, before any model
work, never a default silently used."""

import json
import re
from dataclasses import fields
from pathlib import Path

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


SUITES = Path(__file__).parents[2] / "fixtures" / "suites"


def _readme_examples() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", (SUITES / "README.md").read_text(), re.S)


def test_the_suite_readme_documents_every_task_type_and_key(tmp_path):
    from evalkit.suite import DATASET_KEYS, SUITE_KEYS
    from evalkit.tasks import TASK_TYPES

    readme = (SUITES / "README.md").read_text()
    documented = set()
    for number, example in enumerate(_readme_examples()):
        path = tmp_path / f"example-{number}.toml"
        path.write_text(
            example.replace("../support_faq.jsonl", str(SUITES.parent / "support_faq.jsonl"))
        )
        documented |= {task.type for task in load_suite(path).tasks}
    assert documented == set(TASK_TYPES)  # one example at least per type, each one loads
    decoding = {f.name for f in fields(DecodingConfig)}  # bias refers to generation's table
    for kind in TASK_TYPES.values():
        section = readme.split(f"### `{kind.name}`")[1].split("\n### ")[0]
        for key in kind.params() - (decoding if kind.name == "bias" else set()):
            assert f"`{key}`" in section, f"{kind.name}: {key} is not documented"
    tables = {"datasets": "[datasets.NAME]", "tasks": "[[tasks]]"}
    for key in (*SUITE_KEYS, *DATASET_KEYS):
        assert f"`{tables.get(key, key)}`" in readme, f"{key} is not documented"
