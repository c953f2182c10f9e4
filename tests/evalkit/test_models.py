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
