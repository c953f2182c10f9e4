"""From conversations to training rows: chat template, loss mask, and packing.

Each conversation is rendered with the model's chat template; the labels keep the assistant's
tokens only (or every token), the rest are ``-100``. Conversations are then packed several to a
row of ``max_length`` tokens (best-fit decreasing), each with position ids starting from 0, so
the model's attention (transformers' packed-sequence masks) never crosses from one conversation
into another and almost no compute goes to padding.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from evalkit.chat import IGNORE, assistant_masks


@dataclass(frozen=True)
class Encoded:
    """Tokenized conversations ready to pack, and what was left out."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    too_long: int  # conversations over max_length, dropped (or cut, with truncate)
    no_target: int  # conversations with no token to learn from


def encode(
    tokenizer,
    conversations: Sequence[list[dict]],
    *,
    max_length: int,
    assistant_only: bool = True,
    truncate: bool = False,
) -> Encoded:
    """Token ids and labels per conversation, through the tokenizer's chat template."""
    conversations = list(conversations)
    if not conversations:
        return Encoded([], [], 0, 0)
    ids = tokenizer.apply_chat_template(conversations, return_dict=True)["input_ids"]
    masks = assistant_masks(tokenizer, conversations) if assistant_only else ids
    out_ids, out_labels, too_long, no_target = [], [], 0, 0
    for tokens, mask in zip(ids, masks):
        tokens = list(tokens)
        labels = [t if m else IGNORE for t, m in zip(tokens, mask)] if assistant_only else tokens
        if len(tokens) > max_length:
            too_long += 1
            if not truncate:
                continue
            tokens, labels = tokens[:max_length], labels[:max_length]
        if all(label == IGNORE for label in labels[1:]):
            no_target += 1
            continue
        out_ids.append(tokens)
        out_labels.append(labels)
    return Encoded(out_ids, out_labels, too_long, no_target)


def pack(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group item indices into rows of at most ``max_length`` tokens (best-fit decreasing).

    Deterministic: ties are broken by index.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        need = lengths[i]
        if need > max_length:
            raise ValueError(f"item {i} has {need} tokens > max_length {max_length}")
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            room, row = free.pop(at)
            rows[row].append(i)
            bisect.insort(free, (room - need, row))
        else:
            rows.append([i])
            bisect.insort(free, (max_length - need, len(rows) - 1))
    return rows


def collate(encoded: Encoded, rows: Sequence[Sequence[int]], pad_id: int):
    """A batch of packed rows: input ids, labels and per-conversation position ids.

    The first label of each conversation is ignored: it would be predicted from the end of the
    previous conversation in the row. Rows are padded to the longest; padding is its own
    "conversation" of ignored labels.
    """
    import torch

    width = max(sum(len(encoded.input_ids[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(encoded.input_ids[i])
            ids[r, at : at + n] = torch.tensor(encoded.input_ids[i])
            labels[r, at + 1 : at + n] = torch.tensor(encoded.labels[i][1:])
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}
