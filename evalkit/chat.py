"""Conversations through a model's chat template: what training and evaluation share.

Training learns from the assistant's tokens and evaluation scores the same tokens, so both take
the mask from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from evalkit.errors import EvalkitError

IGNORE = -100  # the label of a token not learned or scored (PyTorch's ignore_index)
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def assistant_masks(tokenizer, conversations: Sequence[list[dict]]) -> list[list[int]]:
    """1 for the assistant's tokens, 0 for the others, per conversation.

    Uses the template's ``{% generation %}`` markers when it has them. Otherwise each reply is
    the text it adds to the rendered conversation (:func:`reply_spans`), and a token is the
    assistant's when its characters overlap a reply, as transformers marks the tokens of a
    marked span: a token that merges a header's last characters with the reply's first ones
    is learned, and the template's newline after the end-of-turn token is not.
    """
    template = tokenizer.chat_template or ""
    if _GENERATION_TAG.search(template):
        out = tokenizer.apply_chat_template(
            list(conversations), return_dict=True, return_assistant_tokens_mask=True
        )
        return out["assistant_masks"]
    if not tokenizer.is_fast:
        raise EvalkitError(
            "the assistant's tokens are found by character offsets, which only a fast "
            "(Rust-backed) tokenizer gives",
            hint="save the model with its fast tokenizer (tokenizer.json), or add "
            "{% generation %} markers to its chat template",
        )
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in conversations]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    masks = []
    for messages, text, offsets in zip(conversations, texts, encoded["offset_mapping"]):
        spans = reply_spans(tokenizer, messages, text)
        masks.append([int(any(s < b and e > a for a, b in spans)) for s, e in offsets])
    return masks


def reply_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """``(start, end)`` in ``text`` (the rendered conversation) of each assistant reply.

    A reply is what its turn adds to the rendering of the turns before it with the generation
    prompt, without the whitespace around it: the header's newline before it and the newline
    that separates it from the next turn are the template's, as a ``{% generation %}`` block
    leaves them out.
    """

    def render(turns: list[dict], prompt: bool) -> str:
        rendered = tokenizer.apply_chat_template(
            turns, add_generation_prompt=prompt, tokenize=False
        )
        if not text.startswith(rendered):
            raise EvalkitError(
                "the chat template renders a conversation's first turns differently once later "
                "turns follow, so the assistant's tokens cannot be found by rendering prefixes",
                hint="add {% generation %} markers around the assistant's text in the template",
            )
        return rendered

    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, end = len(render(messages[:i], True)), len(render(messages[: i + 1], False))
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return spans
