import json
import math
import os

from transformers import AutoModelForCausalLM, AutoTokenizer

from evalkit.provenance import model_hash
from finetune.base_model import (
    CHAT_TEMPLATE,
    base_model_config,
    build_base_model,
    read_metadata,
    split_conversations,
)
from finetune.data.corpora import load_chitchat


def test_loads_as_any_hugging_face_model(micro_model):
    model = AutoModelForCausalLM.from_pretrained(micro_model)
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    assistant = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(assistant) == "hello<|end|>"
    assert model.config.vocab_size == len(tokenizer)


def test_reports_a_validation_perplexity_better_than_chance(micro_model):
    meta = read_metadata(micro_model)
    ppl = meta["metrics"]["validation_perplexity"]
    vocab = AutoTokenizer.from_pretrained(micro_model).vocab_size
    assert math.isfinite(ppl) and 1 < ppl < vocab
    assert meta["model_hash"] == model_hash(micro_model)


def test_is_cached_by_config(micro_workspace, micro_model):
    stamp = os.path.getmtime(micro_model / "model.safetensors")
    assert build_base_model(micro_workspace, "micro") == micro_model
    assert os.path.getmtime(micro_model / "model.safetensors") == stamp
    # A different config is a different cache entry.
    assert base_model_config("micro", seed=1).key() != base_model_config("micro").key()


def test_same_config_gives_the_same_weights(micro_model, tmp_path):
    from evalkit.workspace import open_workspace

    again = build_base_model(open_workspace(tmp_path / "ws"), "micro")
    assert model_hash(again) == model_hash(micro_model)
    assert json.loads((again / "evalkit_base.json").read_text())["metrics"] == read_metadata(
        micro_model
    )["metrics"] | {"train_seconds": read_metadata(again)["metrics"]["train_seconds"]}


def test_split_is_stable_and_disjoint():
    conversations = load_chitchat()[:2000]
    train, validation = split_conversations(conversations, 0.05, seed=0)
    assert not {c["id"] for c in train} & {c["id"] for c in validation}
    assert len(train) + len(validation) == 2000
    assert 50 < len(validation) < 150
    _, again = split_conversations(conversations[:1000], 0.05, seed=0)
    assert {c["id"] for c in again} <= {c["id"] for c in validation}
