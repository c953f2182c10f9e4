"""The assistant mask without ``{% generation %}`` markers equals the mask with them.

Each template comes twice: with markers (transformers marks the tokens of the marked text) and
without (evalkit finds the replies itself). Both render the same text, so both must mark the same
tokens, with a byte-level BPE tokenizer (GPT-2's kind) and a Unigram one (SentencePiece's kind,
which merges a header's newline into the reply's first word). The tokenizers are trained here on
the shipped support FAQ, so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from evalkit.chat import assistant_masks
from evalkit.errors import EvalkitError

FAQ = Path(__file__).resolve().parents[2] / "fixtures" / "support_faq.jsonl"
SPECIAL = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
SPECIAL += ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
SPECIAL += ["<|system|>", "<|user|>", "<|assistant|>"]


def _template(header: str, reply: str, after: str, prompt: str, start: str = "") -> str:
    """A chat template; ``<<`` and ``>>`` stand where the markers go around the reply."""
    return (
        f"{start}{{% for m in messages %}}{{{{ {header} }}}}"
        f"{{% if m['role'] == 'assistant' %}}<<{{{{ {reply} }}}}>>"
        f"{{% else %}}{{{{ {reply} }}}}{{% endif %}}{after}{{% endfor %}}"
        f"{{% if add_generation_prompt %}}{{{{ {prompt} }}}}{{% endif %}}"
    )


TEMPLATES = {
    "chatml": _template(
        "'<|im_start|>' + m['role'] + '\\n'",
        "m['content'] + '<|im_end|>'",
        "{{ '\\n' }}",
        "'<|im_start|>assistant\\n'",
    ),
    "llama3": _template(
        "'<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'",
        "m['content'] | trim + '<|eot_id|>'",
        "",
        "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'",
        start="{{ bos_token }}",
    ),
    # Zephyr's generation prompt lacks the newline its assistant header has.
    "zephyr": _template(
        "'<|' + m['role'] + '|>\\n'",
        "m['content'] + eos_token",
        "{{ '\\n' }}",
        "'<|assistant|>'",
    ),
}


def marked(template: str) -> str:
    return template.replace("<<", "{% generation %}").replace(">>", "{% endgeneration %}")


def unmarked(template: str) -> str:
    return template.replace("<<", "").replace(">>", "")


def conversations() -> list[list[dict]]:
    faq = [json.loads(line)["messages"] for line in FAQ.read_text().splitlines()]
    system = {"role": "system", "content": "You answer questions about Python and Debian."}
    return [
        [
            {"role": "user", "content": "Where is the manual?"},
            {"role": "assistant", "content": "Use the link."},
        ],
        *faq[:20],
        [system, *faq[20], *faq[21], *faq[22]],  # several replies in one conversation
    ]


def _training_texts() -> list[str]:
    """The FAQ in ChatML, as a ChatML model's tokenizer saw its chats."""
    template = jinja2.Template(unmarked(TEMPLATES["chatml"]))
    return [template.render(messages=c) for c in conversations()[1:]]


def _train(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=800,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
        trainer = trainers.UnigramTrainer(
            vocab_size=600, special_tokens=SPECIAL, unk_token="<unk>", show_progress=False
        )
    tokenizer.train_from_iterator(_training_texts(), trainer)
    return tokenizer


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def trained(request):
    return request.param, _train(request.param)


def _tokenizer(trained, template: str):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=trained[1], bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("style", sorted(TEMPLATES))
def test_without_markers_the_mask_is_the_one_with_them(trained, style):
    plain = _tokenizer(trained, unmarked(TEMPLATES[style]))
    reference = _tokenizer(trained, marked(TEMPLATES[style]))
    convs = conversations()
    got, expected = assistant_masks(plain, convs), assistant_masks(reference, convs)
    ids = plain.apply_chat_template(convs, return_dict=True)["input_ids"]
    for tokens, mask, want in zip(ids, got, expected):
        assert len(mask) == len(tokens)
        assert mask == want, plain.convert_ids_to_tokens([t for t, m in zip(tokens, mask) if m])


def test_a_token_across_the_header_and_the_reply_is_the_reply_s(trained):
    """Unigram merges ChatML's header newline into the reply's first word; that token is
    learned, and the newline after the end-of-turn token is not."""
    tokenizer = _tokenizer(trained, unmarked(TEMPLATES["chatml"]))
    convs = conversations()
    merged = 0
    for conv, mask in zip(convs, assistant_masks(tokenizer, convs)):
        text = tokenizer.apply_chat_template(conv, tokenize=False)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        marked_text = [text[s:e] for (s, e), m in zip(encoded["offset_mapping"], mask) if m]
        reply = conv[-1]["content"] + "<|im_end|>"
        assert "".join(marked_text).endswith(reply) and not marked_text[-1].endswith("\n")
        merged += "\n" in marked_text[0]  # the header's newline and the reply's first word
    # the case the test is for happens (with Unigram), so the test cannot pass vacuously
    assert merged > 0 if trained[0] == "unigram" else merged == 0


def test_a_template_that_rewrites_earlier_turns_needs_markers(trained):
    # The last reply is shown in full, earlier ones cut: prefixes do not render as they do later.
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' }}"
        "{% if loop.last %}{{ m['content'] }}{% else %}{{ m['content'][:3] }}{% endif %}"
        "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tokenizer = _tokenizer(trained, template)
    with pytest.raises(EvalkitError, match="renders a conversation's first turns") as info:
        assistant_masks(tokenizer, [conversations()[-1]])
    assert "{% generation %}" in info.value.hint
