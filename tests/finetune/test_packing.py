import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from evalkit.models import load_model
from finetune.packing import IGNORE, Encoded, collate, encode, pack

CONVERSATIONS = [
    [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello!"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is a dog?"},
        {"role": "assistant", "content": "an animal"},
        {"role": "user", "content": "and a cat?"},
        {"role": "assistant", "content": "another one"},
    ],
]


@given(st.lists(st.integers(1, 64), max_size=60), st.integers(64, 200))
def test_pack_puts_every_item_once_within_the_row_length(lengths, max_length):
    rows = pack(lengths, max_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
    assert pack(lengths, max_length) == rows


def test_labels_keep_only_the_assistant_turns(micro_model):
    _, tokenizer = load_model(micro_model)
    enc = encode(tokenizer, CONVERSATIONS, max_length=512)
    targets = tokenizer.decode([t for t in enc.labels[1] if t != IGNORE])
    assert targets == "an animal<|end|>another one<|end|>"
    everything = encode(tokenizer, CONVERSATIONS, max_length=512, assistant_only=False)
    assert everything.labels[1] == everything.input_ids[1]


def test_templates_without_generation_markers_get_the_same_mask(micro_model):
    _, tokenizer = load_model(micro_model)
    marked = encode(tokenizer, CONVERSATIONS, max_length=512)
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    plain = encode(tokenizer, CONVERSATIONS, max_length=512)
    assert plain.input_ids == marked.input_ids
    for a, b in zip(marked.labels, plain.labels):
        # Rendering prefixes also marks the newline the template writes after each turn.
        text = tokenizer.decode([t for t in b if t != IGNORE]).replace("<|end|>\n", "<|end|>")
        assert text == tokenizer.decode([t for t in a if t != IGNORE])


def test_too_long_conversations_are_left_out_or_cut(micro_model):
    _, tokenizer = load_model(micro_model)
    enc = encode(tokenizer, CONVERSATIONS, max_length=12)
    assert enc.too_long == 2 and enc.input_ids == []
    cut = encode(tokenizer, CONVERSATIONS, max_length=12, truncate=True)
    assert all(len(ids) == 12 for ids in cut.input_ids)


def test_packed_conversations_do_not_see_each_other(micro_model):
    model, tokenizer = load_model(micro_model, device="cpu")
    enc = encode(tokenizer, CONVERSATIONS, max_length=64)
    batch = collate(enc, [[0, 1]], pad_id=tokenizer.pad_token_id)
    n0 = len(enc.input_ids[0])
    assert batch["position_ids"][0, n0].item() == 0  # positions restart per conversation
    assert batch["labels"][0, n0].item() == IGNORE  # no target across the boundary
    with torch.no_grad():
        packed = model(**{k: batch[k] for k in ("input_ids", "position_ids")}, use_cache=False)
        alone = model(input_ids=torch.tensor([enc.input_ids[1]])).logits
    n1 = len(enc.input_ids[1])
    torch.testing.assert_close(packed.logits[0, n0 : n0 + n1], alone[0], rtol=1e-4, atol=1e-4)


def test_collate_pads_with_ignored_labels():
    enc = Encoded([[5, 6, 7], [8, 9]], [[5, 6, 7], [8, 9]], 0, 0)
    batch = collate(enc, [[0], [1]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]


@pytest.mark.parametrize("max_length", [1, 2])
def test_pack_rejects_items_longer_than_a_row(max_length):
    with pytest.raises(ValueError):
        pack([3], max_length)
