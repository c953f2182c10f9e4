import json

import pytest

from evalkit.errors import EvalkitError
from finetune.data.formats import InputSpec, read_input


def _read(tmp_path, name, content, fmt="auto", **kw):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return list(read_input(InputSpec.parse(str(path)), fmt, **kw))


def _jsonl(*objs):
    return "".join(json.dumps(o) + "\n" for o in objs)


MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    "record",
    [
        {"messages": MESSAGES, "topic": "greet"},
        {
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
            "topic": "greet",
        },
        {"instruction": "hi", "input": "", "output": "hello", "topic": "greet"},
    ],
    ids=["messages", "sharegpt", "alpaca"],
)
def test_formats_are_detected_and_converted(tmp_path, record):
    [rec] = _read(tmp_path, "in.jsonl", _jsonl(record))
    assert rec.error is None
    assert rec.conversation["messages"] == MESSAGES
    assert rec.conversation["topic"] == "greet"
    assert rec.conversation["source"] == "in" and rec.conversation["id"] == "in-1"


def test_alpaca_input_and_system(tmp_path):
    rec = {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "be brief"}
    [r] = _read(tmp_path, "a.json", json.dumps([rec]))
    assert [m["role"] for m in r.conversation["messages"]] == ["system", "user", "assistant"]
    assert r.conversation["messages"][1]["content"] == "Translate\n\nbonjour"


def test_csv_with_named_columns_keeps_other_columns(tmp_path):
    text = 'q,a,topic\n"How do I, say, reset?",Press the button,support\n'
    [r] = _read(tmp_path, "log.csv", text, prompt_column="q", response_column="a")
    assert r.conversation["messages"][0]["content"] == "How do I, say, reset?"
    assert r.conversation["topic"] == "support" and r.line == 2


def test_csv_without_the_columns_names_them(tmp_path):
    with pytest.raises(EvalkitError, match="no column 'prompt'") as info:
        _read(tmp_path, "log.csv", "q,a\nx,y\n")
    assert "--prompt-column" in info.value.hint


def test_bad_lines_become_error_records_with_their_line(tmp_path):
    content = (
        _jsonl({"messages": MESSAGES}).encode()
        + b"{not json\n"
        + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
        + b"[1, 2]\n"
        + b'{"text": "no known fields"}\n'
        + b'{"messages": "'
        + b"x" * 300
        + b'"}\n'
    )
    records = _read(tmp_path, "mixed.jsonl", content, max_line_bytes=200)
    assert [(r.line, r.error) for r in records] == [
        (1, None),
        (2, "malformed JSON"),
        (3, "invalid UTF-8"),
        (4, "not a JSON object"),
        (5, "wrong format"),
        (6, "line too long"),
    ]
    assert all(r.raw for r in records)


def test_explicit_format_reports_the_missing_field(tmp_path):
    [r] = _read(tmp_path, "x.jsonl", _jsonl({"messages": MESSAGES}), fmt="sharegpt")
    assert r.error == "missing field" and "conversations" in r.detail


def test_missing_file_is_named(tmp_path):
    with pytest.raises(EvalkitError, match="cannot read input"):
        list(read_input(InputSpec.parse(str(tmp_path / "nope.jsonl"))))


def test_source_name_from_name_equals_path(tmp_path):
    spec = InputSpec.parse(f"logs={tmp_path / 'a.jsonl'}")
    assert spec.source == "logs" and spec.path == tmp_path / "a.jsonl"
