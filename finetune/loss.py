"""The training objective: summed next-token NLL over the target tokens of a batch.

This is the loss as a textbook writes it: the whole model's logits, then cross-entropy over the
target tokens. The fast way to the same loss is :mod:`evalkit.accel.loss`.
"""

from __future__ import annotations

import torch

from evalkit.chat import IGNORE


class TargetNLL(torch.nn.Module):
    """Summed NLL of a batch's target tokens, and their count, from packed rows.

    The module holds the model, so DDP can wrap it.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, labels):
        targets = labels[:, 1:]
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
        logits = self.model(**inputs).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return nll, (targets != IGNORE).sum()
