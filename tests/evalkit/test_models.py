import json
import shutil

import pytest

from evalkit.errors import EvalkitError
from evalkit.models import load_model


def test_loads_a_model_directory(micro_model):
    model, tokenizer = load_model(micro_model, device="cpu")
    assert not model.training
    assert tokenizer.chat_template


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(EvalkitError, match="does not exist") as info:
        load_model(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(EvalkitError, match=r"no config\.json"):
        load_model(tmp_path)


def test_corrupt_weights_are_reported(micro_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(micro_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EvalkitError, match="cannot load the model weights"):
        load_model(broken)


def test_tokenizer_without_chat_template_is_refused(model_without_template):
    with pytest.raises(EvalkitError, match="no chat template"):
        load_model(model_without_template)
    model, _ = load_model(model_without_template, require_chat_template=False)
    assert model is not None


def test_a_device_that_is_not_one_is_named():
    from evalkit.models import pick_device

    with pytest.raises(EvalkitError, match="'bogus' is not a device"):
        pick_device("bogus")
    assert pick_device("cpu").type == "cpu"


def _broken_copy(micro_model, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(micro_model, broken)
    damage(broken)
    return broken


def _no_tokenizer(path):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (path / name).unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_no_tokenizer, "has no tokenizer files"),
        (
            lambda p: (p / "config.json").write_text('{"model_type": "gpt2",'),
            "config.json is corrupt",
        ),
        (lambda p: (p / "config.json").write_text("[]"), "config.json is corrupt"),
        (lambda p: (p / "config.json").write_text("{}"), "config.json names no model_type"),
        (lambda p: (p / "model.safetensors").unlink(), "has no weights"),
    ],
)
def test_a_broken_model_directory_says_what_is_missing(micro_model, tmp_path, damage, message):
    broken = _broken_copy(micro_model, tmp_path, damage)
    with pytest.raises(EvalkitError, match=message) as info:
        load_model(broken)
    assert str(broken) in str(info.value)


def test_a_file_given_as_a_model_is_called_a_file(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(EvalkitError, match="is a file, not a model directory"):
        load_model(file)


@pytest.mark.parametrize("command", ["eval", "data prepare"])
def test_every_command_uses_the_one_check(micro_model, tmp_path, capsys, command):
    from evalkit.cli import main

    broken = _broken_copy(micro_model, tmp_path, _no_tokenizer)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    (tmp_path / "chats.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    (tmp_path / "suite.toml").write_text(
        '[datasets.c]\npath = "chats.jsonl"\n[[tasks]]\ntype = "perplexity"\ndataset = "c"\n'
    )
    if command == "eval":
        args = ["eval", "--model", str(broken), "--suite", str(tmp_path / "suite.toml")]
    else:
        args = ["data", "prepare", str(tmp_path / "chats.jsonl"), "--out", str(tmp_path / "ds")]
        args += ["--model", str(broken)]
    assert main(["--workspace", str(tmp_path / "ws"), *args]) == 2
    err = capsys.readouterr().err
    assert f"{broken} has no tokenizer files" in err and "Traceback" not in err
