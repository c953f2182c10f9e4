"""The fast path of the training loss (:class:`finetune.loss.TargetNLL`): the same loss, in less
time.

- The fused GELU (:func:`evalkit.accel.layers.fast_layers`; its gradient is PyTorch's).
- The model's body, then its output layer only at the target positions, with a base-2
  cross-entropy that keeps its exps for the backward pass
  (:func:`evalkit.accel.output_layer.summed_nll`): with the loss on the assistant's tokens, no
  vocabulary-wide logits, log-softmax or gradient are computed at the user, system and padding
  positions.

Each is checked on the first batch against the plain loss and left out where they differ by
more than rounding (models whose logits are not their output layer's, e.g. soft-capping).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from evalkit.accel.layers import fast_layers, same_within_rounding
from evalkit.accel.output_layer import output_layer_split, summed_nll
from evalkit.chat import IGNORE


class TargetNLLApart(torch.nn.Module):
    """What the plain loss computes, from the body's hidden states at the target positions."""

    def __init__(self, model: torch.nn.Module, split: tuple):
        super().__init__()
        self.model = model
        self.split = split

    def forward(self, input_ids, position_ids, labels):
        targets = labels[:, 1:]
        keep = targets != IGNORE
        body, head = self.split
        states = body(input_ids=input_ids, position_ids=position_ids, use_cache=False)[0]
        return summed_nll(states[:, :-1][keep], head, targets[keep]), keep.sum()


def probe(loss: torch.nn.Module, batch: dict, autocast: Callable) -> torch.Tensor:
    """The loss of one batch without dropout or gradient: to compare two ways of computing it."""
    training = loss.model.training
    loss.model.eval()
    try:
        with torch.no_grad(), autocast():
            return loss(**batch)[0]
    finally:
        loss.model.train(training)


@contextmanager
def fast_loss(
    plain: torch.nn.Module, batch: dict, autocast: Callable, bf16: bool
) -> Iterator[torch.nn.Module]:
    """The fastest loss module that gives ``plain``'s loss on ``batch``, for the duration (the
    fused layers are swapped back out at the end)."""
    reference = probe(plain, batch, autocast)

    def same() -> bool:
        return same_within_rounding(probe(plain, batch, autocast), reference, bf16)

    with fast_layers(plain.model, same):
        split = output_layer_split(plain.model)
        chosen = plain
        if split is not None:
            apart = TargetNLLApart(plain.model, split)
            try:
                agree = same_within_rounding(probe(apart, batch, autocast), reference, bf16)
            except Exception:  # a body that does not take these inputs
                agree = False
            chosen = apart if agree else plain
        yield chosen
