import threading

import pytest
import torch
from transformers.activations import GELUTanh

from evalkit.accel import layers
from evalkit.accel.layers import FusedGPT2MLP, OneDNNLinear, fast_layers
from evalkit.models import load_model
from evalkit.perplexity import text_nll

TEXTS = ["Hello there, how are you today?", "I like green tea.\nMe too!", "ok"] * 3

needs_onednn = pytest.mark.skipif(
    layers._onednn_linear() is None,
    reason="this PyTorch build has no oneDNN linear op",
)


def _logits(model):
    ids = torch.tensor([[5, 17, 33, 2, 9, 41, 7, 3]])
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def _types(model):
    return [type(m) for m in model.modules()]


@needs_onednn
def test_fast_layers_change_the_outputs_by_rounding_only(micro_model):
    model, _ = load_model(micro_model, device="cpu")
    before = _types(model)
    reference = _logits(model)
    with fast_layers(model, lambda: True, onednn=True) as swapped:
        assert swapped > 0
        assert {OneDNNLinear, FusedGPT2MLP} <= set(_types(model))
        fast = _logits(model)
    assert _types(model) == before
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_failed_check_or_an_error_keeps_the_model_as_loaded(micro_model):
    model, _ = load_model(micro_model, device="cpu")
    before = _types(model)
    with fast_layers(model, lambda: False, onednn=True) as swapped:
        assert swapped == 0 and _types(model) == before
    with pytest.raises(KeyError), fast_layers(model, lambda: True, onednn=True):
        assert _types(model) != before
        raise KeyError("scoring failed")
    assert _types(model) == before


@needs_onednn
def test_onednn_linear_is_f_linear():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(128, 64), torch.randn(4096, 64), torch.randn(4096)
    for b in (None, bias):
        torch.testing.assert_close(
            layers.onednn_linear(x, weight, b),
            torch.nn.functional.linear(x, weight, b),
        )


def test_onednn_is_only_for_float32_on_the_cpu(micro_model):
    model, _ = load_model(micro_model, device="cpu")
    assert layers.onednn_ready(model) == (layers._onednn_linear() is not None)
    assert not layers.onednn_ready(model.double())


def test_sigmoid_gelu_is_the_tanh_gelu():
    x = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([-1e20, 1e20, 0.0])])
    reference = torch.nn.functional.gelu(x, approximate="tanh")
    torch.testing.assert_close(layers.sigmoid_gelu_(x.clone()), reference)


@needs_onednn
@pytest.mark.parametrize("gelu_in_onednn", [True, False])
def test_fused_mlp_is_the_mlp(micro_model, gelu_in_onednn):
    model, _ = load_model(micro_model, device="cpu")
    mlp = model.transformer.h[0].mlp
    x = torch.randn(3, 7, mlp.c_fc.weight.shape[0])
    with torch.inference_mode():
        fused = FusedGPT2MLP(mlp, gelu_in_onednn)(x)
        torch.testing.assert_close(fused, mlp(x), rtol=1e-5, atol=1e-6)


def test_without_onednn_only_the_gelu_is_swapped(micro_model):
    """As for training or autocast: the oneDNN layers have no gradient and take float32 only."""
    model, _ = load_model(micro_model, device="cpu")
    with fast_layers(model, lambda: True) as swapped:
        types = _types(model)
        assert swapped > 0 and GELUTanh in types and OneDNNLinear not in types


@needs_onednn
def test_scores_are_the_same_with_and_without_fast_layers(micro_model, monkeypatch):
    model, tokenizer = load_model(micro_model, device="cpu")
    calls = []
    forward = OneDNNLinear.forward
    monkeypatch.setattr(
        OneDNNLinear, "forward", lambda self, x: calls.append(1) or forward(self, x)
    )
    fast = text_nll(model, tokenizer, TEXTS)
    assert calls  # the swapped layers passed their check and scored
    plain = text_nll(model, tokenizer, TEXTS, fast=False)
    assert [s.nll for s in fast] == pytest.approx([s.nll for s in plain], rel=1e-6)


@needs_onednn
def test_each_swap_alone_keeps_the_outputs(micro_model):
    """Each replacement computes what it replaces, so a forward pass running on another thread
    while the swaps are made or undone sees a consistent model (the MLP is replaced whole)."""
    model, _ = load_model(micro_model, device="cpu")
    reference = _logits(model)
    swaps = layers._swaps(model, onednn=True)
    assert len(swaps) > 4
    for parent, name, replacement in swaps:
        original = getattr(parent, name)
        setattr(parent, name, replacement)
        torch.testing.assert_close(_logits(model), reference, rtol=1e-5, atol=1e-5)
        setattr(parent, name, original)


@needs_onednn
def test_concurrent_calls_share_the_swaps(micro_model):
    model, tokenizer = load_model(micro_model, device="cpu")
    before = _types(model)
    expected = [s.nll for s in text_nll(model, tokenizer, TEXTS)]
    scored = []

    def score():
        for _ in range(5):
            scored.append([s.nll for s in text_nll(model, tokenizer, TEXTS)])

    scorers = [threading.Thread(target=score) for _ in range(3)]
    for t in scorers:
        t.start()
    with (
        fast_layers(model, lambda: True, onednn=True),
        pytest.raises(RuntimeError, match="onednn differs"),
        fast_layers(model, lambda: True),
    ):
        pass
    for t in scorers:
        t.join()
    assert len(scored) == 15
    for nll in scored:
        assert nll == pytest.approx(expected, rel=1e-6)
    assert _types(model) == before
