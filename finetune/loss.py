"""The training objective: summed next-token NLL over the target tokens of a batch."""

from __future__ import annotations

import torch

from evalkit.fusion import same_within_rounding
from evalkit.models import output_layer_split
from finetune.packing import IGNORE


class TargetNLL(torch.nn.Module):
    """Summed NLL of a batch's target tokens, and their count, from packed rows.

    ``apart=True`` runs the model's body, then its output layer only at the target positions:
    with the loss on the assistant's tokens, no vocabulary-wide logits, log-softmax or gradient
    are computed at the user, system and padding positions (a fifth of a CPU step of the
    default base model). Models whose logits are not their output layer's (soft-capping) must
    not take that way: :func:`target_nll` checks. The module holds the model, so DDP can wrap it.
    """

    def __init__(self, model: torch.nn.Module, apart: bool = False):
        super().__init__()
        self.model = model
        self.split = output_layer_split(model) if apart else None

    def forward(self, input_ids, position_ids, labels):
        targets = labels[:, 1:]
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
        if self.split is None:
            logits = self.model(**inputs).logits[:, :-1]
            logits, scored = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        else:
            body, head = self.split
            keep = targets != IGNORE
            logits, scored = head(body(**inputs)[0][:, :-1][keep]), targets[keep]
        nll = torch.nn.functional.cross_entropy(
            logits.float(), scored, ignore_index=IGNORE, reduction="sum"
        )
        return nll, (targets != IGNORE).sum()


def probe(loss: TargetNLL, batch: dict, autocast) -> torch.Tensor:
    """The loss of one batch without dropout or gradient: to compare two ways of computing it."""
    training = loss.model.training
    loss.model.eval()
    try:
        with torch.no_grad(), autocast():
            return loss(**batch)[0]
    finally:
        loss.model.train(training)


def target_nll(model, batch: dict, autocast, reference: torch.Tensor, bf16: bool) -> TargetNLL:
    """The model's training loss: the output layer apart where ``batch`` gives the
    ``reference`` loss (the whole model's) with it."""
    apart = TargetNLL(model, apart=True)
    if apart.split is None:
        return TargetNLL(model)
    try:
        agree = same_within_rounding(probe(apart, batch, autocast), reference, bf16)
    except Exception:  # a body that does not take these inputs
        agree = False
    return apart if agree else TargetNLL(model)
