import pytest
import torch
from transformers.activations import GELUTanh

import evalkit.fusion
from evalkit.fusion import OneDNNLinear, fast_layers
from evalkit.models import load_model
from evalkit.perplexity import text_nll

TEXTS = ["Hello there, how are you today?", "I like green tea.\nMe too!", "ok"] * 3

pytestmark = pytest.mark.skipif(
    evalkit.fusion._onednn_linear() is None, reason="this PyTorch build has no oneDNN linear op"
)


def _logits(model):
    ids = torch.tensor([[5, 17, 33, 2, 9, 41, 7, 3]])
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def test_fast_layers_change_the_outputs_by_rounding_only(micro_model):
    model, _ = load_model(micro_model, device="cpu")
    before = [type(m) for m in model.modules()]
    reference = _logits(model)
    with fast_layers(model, lambda: True, onednn=True) as swapped:
        assert swapped > 0
        types = [type(m) for m in model.modules()]
        assert OneDNNLinear in types and torch.nn.Identity in types  # the MLP's GELU fused in
        fast = _logits(model)
    assert [type(m) for m in model.modules()] == before
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_a_failed_check_keeps_the_model_as_loaded(micro_model):
    model, _ = load_model(micro_model, device="cpu")
    before = [type(m) for m in model.modules()]
    with fast_layers(model, lambda: False, onednn=True) as swapped:
        assert swapped == 0
        assert [type(m) for m in model.modules()] == before


def test_without_onednn_only_the_gelu_is_swapped(micro_model):
    """As for training or autocast: the oneDNN layers have no gradient and take float32 only."""
    model, _ = load_model(micro_model, device="cpu")
    with fast_layers(model, lambda: True) as swapped:
        types = [type(m) for m in model.modules()]
        assert swapped > 0 and GELUTanh in types and OneDNNLinear not in types


def test_scores_are_the_same_with_and_without_fast_layers(micro_model, monkeypatch):
    model, tokenizer = load_model(micro_model, device="cpu")
    fast = text_nll(model, tokenizer, TEXTS)
    monkeypatch.setattr(evalkit.fusion, "_swaps", lambda *args: [])
    plain = text_nll(model, tokenizer, TEXTS)
    assert [s.nll for s in fast] == pytest.approx([s.nll for s in plain], rel=1e-6)
