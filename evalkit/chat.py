"""Conversations through a model's chat template: what training and evaluation share.

Training learns from the assistant's tokens and evaluation scores the same tokens, so both take
the mask from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

IGNORE = -100  # the label of a token not learned or scored (PyTorch's ignore_index)
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def assistant_masks(tokenizer, conversations: Sequence[list[dict]]) -> list[list[int]]:
    """1 for the assistant's tokens. Uses the template's {% generation %} markers when it has
    them; otherwise renders each prefix of the conversation and marks what each reply adds."""
    template = tokenizer.chat_template or ""
    if _GENERATION_TAG.search(template):
        out = tokenizer.apply_chat_template(
            list(conversations), return_dict=True, return_assistant_tokens_mask=True
        )
        return out["assistant_masks"]

    def length(messages: list[dict], prompt: bool) -> int:
        return len(
            tokenizer.apply_chat_template(messages, add_generation_prompt=prompt, return_dict=False)
        )

    masks = []
    for messages in conversations:
        mask = [0] * length(messages, False)
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                start, end = length(messages[:i], True), length(messages[: i + 1], False)
                mask[start:end] = [1] * (end - start)
        masks.append(mask)
    return masks
