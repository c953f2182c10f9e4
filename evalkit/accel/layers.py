"""Faster layers, swapped into a model for the duration of a scoring call or a training run.

- transformers' ``NewGELUActivation`` (GPT-2's tanh GELU, five separate ops) becomes the same
  function in one fused op.
- On the CPU in float32, where PyTorch has oneDNN: each transformers ``Conv1D`` (GPT-2's linear
  layer) becomes one oneDNN linear op. With AVX-512, the tanh GELU of a GPT-2 MLP is applied
  inside its first linear layer while the output is still in cache, instead of in a pass of
  its own over an activation four times as wide as the model. Without AVX-512, tanh is slow in
  both PyTorch and oneDNN, much slower than sigmoid and exp2, and the GELU is taken in place as
  ``x * sigmoid(2u)`` instead, the sigmoid by exp2 (:func:`sigmoid_gelu_`).

The math is the same; outputs differ by rounding (~1e-7). The caller checks the swapped model
against the model as loaded, and keeps the original when they differ. Training uses the fused
GELU alone (its gradient is PyTorch's). What each saves is measured in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from contextlib import contextmanager

import torch
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.pytorch_utils import Conv1D


def _onednn_linear():
    """PyTorch's oneDNN linear op with a fused activation, or None where this build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def onednn_ready(model: torch.nn.Module) -> bool:
    """Whether this build has the oneDNN linear op and the model is float32 on the CPU."""
    return _onednn_linear() is not None and all(
        p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters()
    )


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``F.linear(x, weight, bias)`` as one oneDNN op (float32, CPU, no gradient).

    For an output layer over a small model's width, faster than ``F.linear`` (MKL) on the CPU
    (``benchmarks/RESULTS.md``).
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# -2 sqrt(2/pi) log2(e): the GELU's exponent in base 2.
_GELU_SCALE = -2 * math.sqrt(2 / math.pi) * math.log2(math.e)


def sigmoid_gelu_(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU of ``x``, in place and without gradient, as ``x * sigmoid(2u)`` with
    ``u = sqrt(2/pi) * (x + 0.044715 x^3)``: the same function, as 0.5 (1 + tanh u) is
    sigmoid(2u), in ops that are fast without AVX-512. The sigmoid is taken as
    ``1 / (1 + 2^(-2u log2 e))``: exp2 runs at twice the rate of sigmoid on AVX2."""
    u = x * x
    u.mul_(_GELU_SCALE * 0.044715).add_(_GELU_SCALE).mul_(x)
    return x.div_(u.exp2_().add_(1))


def _gelu_in_onednn() -> bool:
    """Whether oneDNN's fused tanh GELU is the fast way: with AVX-512 (see the module doc)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class OneDNNLinear(torch.nn.Module):
    """A ``Conv1D`` or ``Linear`` layer as one oneDNN op, optionally with tanh GELU fused in."""

    def __init__(self, layer: torch.nn.Module, gelu: bool = False):
        super().__init__()
        weight = layer.weight.t() if isinstance(layer, Conv1D) else layer.weight
        self.weight = weight.detach().contiguous()  # (out, in), as oneDNN takes it
        self.bias = None if layer.bias is None else layer.bias.detach()
        self.post_op = ("gelu", [], "tanh") if gelu else ("none", [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat, self.weight, self.bias, *self.post_op)
        return out.view(*x.shape[:-1], out.shape[-1])


class FusedGPT2MLP(torch.nn.Module):
    """GPT-2's MLP for inference: ``c_fc`` with its tanh GELU fused in (or taken in place right
    after it, without AVX-512), then ``c_proj``."""

    def __init__(self, mlp: GPT2MLP, gelu_in_onednn: bool | None = None):
        super().__init__()
        self.gelu_in_onednn = _gelu_in_onednn() if gelu_in_onednn is None else gelu_in_onednn
        self.c_fc = OneDNNLinear(mlp.c_fc, gelu=self.gelu_in_onednn)
        self.c_proj = OneDNNLinear(mlp.c_proj)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.c_fc(hidden_states)
        return self.c_proj(hidden if self.gelu_in_onednn else sigmoid_gelu_(hidden))


def _fusable_mlp(module: torch.nn.Module) -> bool:
    return (
        type(module) is GPT2MLP
        and type(module.c_fc) is Conv1D
        and type(module.c_proj) is Conv1D
        and type(module.act) in (NewGELUActivation, GELUTanh)
    )


def _swaps(
    model: torch.nn.Module, onednn: bool
) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute, replacement) for each layer to swap.

    Each replacement computes what the layer it replaces computes, so a forward pass that runs
    while the swaps are made or undone sees a consistent model: the MLP is replaced whole.
    """
    swaps = []
    onednn = onednn and onednn_ready(model)
    replaced = set()
    for parent in model.modules():
        if id(parent) in replaced:
            continue
        for name, child in parent.named_children():
            if onednn and _fusable_mlp(child):
                swaps.append((parent, name, FusedGPT2MLP(child)))
                replaced.add(id(child))
            elif onednn and type(child) is Conv1D:
                swaps.append((parent, name, OneDNNLinear(child)))
            elif type(child) is NewGELUActivation:
                swaps.append((parent, name, GELUTanh()))
    return swaps


def same_within_rounding(a: torch.Tensor, b: torch.Tensor, autocast: bool = False) -> bool:
    """Two ways of computing one model's scores agree: float32 rounding, or bf16 rounding each
    way differently under autocast; soft-capped or scaled logits differ far more."""
    return torch.allclose(a, b, rtol=1e-2 if autocast else 1e-5, atol=1e-4)


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # a layer this build's oneDNN cannot run: keep the originals
        return False


# Models swapped now: model -> [callers inside fast_layers, onednn, (parent, name, original)...].
# Concurrent calls on one model share one set of swaps; the last one out undoes them.
_swapped: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_swapped_lock = threading.Lock()


@contextmanager
def fast_layers(model: torch.nn.Module, same: Callable[[], bool], *, onednn: bool = False):
    """Swap in the faster layers for the duration, unless ``same()`` then says the model's
    outputs changed; yields the number of layers swapped (0 if none or undone).

    ``onednn``: the oneDNN layers too, for inference without autocast (they copy the weights,
    take float32 only and have no gradient); the fused GELU is swapped in either way.
    Concurrent calls on one model share the swaps and must ask for the same ``onednn``.
    """
    with _swapped_lock:
        entry = _swapped.get(model)
        if entry is None:
            originals = []
            try:
                for parent, name, replacement in _swaps(model, onednn):
                    originals.append((parent, name, getattr(parent, name)))
                    setattr(parent, name, replacement)
                kept = not originals or _holds(same)
            except BaseException:
                _undo(originals)
                raise
            if not kept:
                _undo(originals)
                originals = []
            entry = _swapped[model] = [0, onednn, originals]
        elif entry[1] != onednn:
            raise RuntimeError("the model is in use with other fast layers (onednn differs)")
        entry[0] += 1
    try:
        yield len(entry[2])
    finally:
        with _swapped_lock:
            entry[0] -= 1
            if entry[0] == 0:
                _undo(entry[2])
                del _swapped[model]


def _undo(originals: list) -> None:
    for parent, name, original in reversed(originals):
        setattr(parent, name, original)
