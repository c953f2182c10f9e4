"""The training objective: summed next-token NLL over the target tokens of a batch."""

from __future__ import annotations

import math

import torch

from evalkit.fusion import same_within_rounding
from evalkit.models import base2_output_layer, exp_needs_no_shift, output_layer_split
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
        keep = targets != IGNORE
        if self.split is None:
            logits = self.model(**inputs).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
        else:
            body, head = self.split
            nll = summed_nll(body(**inputs)[0][:, :-1][keep], head, targets[keep])
        return nll, keep.sum()


def summed_nll(states: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL of ``targets`` under ``head(states)``: cross-entropy with fewer passes over
    the vocabulary-wide logits than PyTorch's (a third of a CPU step of the default base
    model went to its log-softmax, its backward and the zeroed gradient of the NLL).

    The logits come in base 2 (:func:`evalkit.models.base2_output_layer`), the forward takes
    exp2 once and keeps the result, and the backward turns it into the gradient in place.
    """
    weight, bias = base2_output_layer(head)
    logits = torch.nn.functional.linear(states, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 to float32
    return _Base2NLL.apply(logits, targets, not exp_needs_no_shift(states, head))


class _Base2NLL(torch.autograd.Function):
    """Summed natural-log NLL of the targets of base-2 logits. One backward pass: the saved
    exps become the gradient (a second backward through the same graph raises)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, shift: bool) -> torch.Tensor:
        if shift:
            top = logits.amax(dim=1, keepdim=True)
            exps = torch.sub(logits, top).exp2_()
        else:
            top, exps = None, torch.exp2(logits)
        total = exps.sum(dim=1)
        log_total = total.log2() if top is None else total.log2() + top[:, 0]
        target_logits = logits.gather(1, targets[:, None])[:, 0]
        ctx.save_for_backward(exps, total, targets)
        return (log_total - target_logits).sum() * math.log(2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        # d/dlogit_j = ln 2 (softmax_j - [j is the target]); ln 2 cancels the weights' log2(e).
        exps, total, targets = ctx.saved_tensors
        scale = grad * math.log(2)
        exps.mul_((scale / total)[:, None])  # the saved exps are needed no more
        exps[torch.arange(len(targets), device=exps.device), targets] -= scale
        return exps, None, None


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
