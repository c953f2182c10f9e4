"""The output layer apart from the model's body: run only where a token is scored.

Scoring and training need the vocabulary-wide logits only at the scored (target) positions;
padding, context and masked positions need none. The logits are taken in base 2, so a
log-sum-exp over the vocabulary takes exp2 (faster than exp on the CPU), and the
training loss keeps its exps for the backward pass instead of a log-softmax.
"""

from __future__ import annotations

import math

import torch


def output_layer_split(model):
    """``(body, output layer)`` of a causal LM whose logits may be ``output(body(...)[0])``, or
    None.

    Scoring or training through them runs the output layer only where a token is scored:
    padding, context and masked positions cost no vocabulary-wide logits. Models that change
    the logits afterwards (soft-capping, scaling) do not fit; callers compare the two ways on
    a few rows before taking this one.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(head, torch.nn.Linear) or not isinstance(body, torch.nn.Module):
        return None
    return body, head


def base2_output_layer(head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's weight and bias scaled by log2(e): its logits in base 2.

    A log-sum-exp over the vocabulary then takes exp2, which runs faster than exp on the CPU,
    and the scaling costs a pass over the weights, not over the logits.
    Differentiable: gradients reach the layer's parameters.
    """
    bias = None if head.bias is None else head.bias * math.log2(math.e)
    return head.weight * math.log2(math.e), bias


def exp_needs_no_shift(states: torch.Tensor, head: torch.nn.Linear) -> bool:
    """Whether exp of every logit of ``head(states)`` can neither overflow in a sum over the
    vocabulary nor underflow to zero, so a log-sum-exp needs no max pass.

    |logit| <= |state| * max |weight row| + max |bias|, which must stay within ±(87 - ln
    vocabulary) (float32's exp range). Off the CPU the answer is always no: reading it back
    would make the host wait for the device at every batch, and a max pass costs little there.
    """
    if states.device.type != "cpu":
        return False
    with torch.no_grad():
        rows = torch.linalg.vector_norm(states.float(), dim=1)
        bound = rows * torch.linalg.vector_norm(head.weight.float(), dim=1).max()
        if head.bias is not None:
            bound += head.bias.abs().max().float()
        return bool((bound < 87 - math.log(head.weight.shape[0])).all())


def split_nll(split, ids, labels, chunk: int, linear):
    """Summed NLL of each row of a right-padded batch from the body's hidden states (read as
    the plain path reads them), the output layer run by chunks.

    Only the scored positions go through the output layer (``linear``, as ``F.linear``),
    ``chunk`` rows at a time (128 on the CPU: the log-sum-exp over the vocabulary is taken
    while those logits are in cache).
    """
    body, head = split
    hidden = body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)[0]
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    states, targets = hidden[rows, cols], labels[rows, cols]
    unshifted = exp_needs_no_shift(states, head)
    weight, bias = base2_output_layer(head)
    nll = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), chunk):
        logits = linear(states[start : start + chunk], weight, bias).float()
        target_logits = logits.gather(1, targets[start : start + chunk, None])[:, 0]
        # log-sum-exp in base 2 in place, in fewer passes over the logits than torch.logsumexp.
        if unshifted:
            log_total = logits.exp2_().sum(dim=1).log2_()
        else:
            top = logits.amax(dim=1, keepdim=True)
            log_total = logits.sub_(top).exp2_().sum(dim=1).log2_().add_(top[:, 0])
        nll[start : start + chunk] = (log_total - target_logits) * math.log(2)
    totals = torch.zeros(labels.shape[0], dtype=torch.float64, device=hidden.device)
    return totals.index_add_(0, rows, nll.double())


def summed_nll(states: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL of ``targets`` under ``head(states)``: cross-entropy with fewer passes over
    the vocabulary-wide logits than PyTorch's (its log-softmax, its backward and the zeroed
    gradient of the NLL took much of a CPU step of a small model).

    The logits come in base 2 (:func:`base2_output_layer`), the forward takes
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
