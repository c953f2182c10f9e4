import contextlib

import pytest
import torch

from evalkit.accel.loss import TargetNLLApart, fast_loss
from evalkit.accel.output_layer import exp_needs_no_shift, output_layer_split, summed_nll
from evalkit.models import load_model
from finetune.loss import TargetNLL
from finetune.packing import collate, encode, pack
from finetune.train import _read_split


@pytest.fixture
def batch_and_model(micro_model, topics_dataset):
    model, tokenizer = load_model(micro_model, device="cpu")
    context = model.config.max_position_embeddings
    enc = encode(tokenizer, _read_split(topics_dataset, "train")[:40], max_length=context)
    rows = pack([len(x) for x in enc.input_ids], context)[:4]
    return collate(enc, rows, tokenizer.pad_token_id or 0), model


def _loss_and_grads(loss, batch):
    loss.model.zero_grad()
    nll, count = loss(**batch)
    nll.backward()
    return nll.item(), count.item(), [p.grad.clone() for p in loss.model.parameters()]


def test_output_layer_apart_gives_the_same_loss_and_gradients(batch_and_model):
    batch, model = batch_and_model
    torch.manual_seed(0)  # the micro model has no dropout; seed anyway
    apart = TargetNLLApart(model, output_layer_split(model))
    nll_apart, count_apart, grads_apart = _loss_and_grads(apart, batch)
    nll_whole, count_whole, grads_whole = _loss_and_grads(TargetNLL(model), batch)
    masked = (batch["labels"][:, 1:] == -100).sum().item()
    assert masked > 0 and count_apart == count_whole  # positions without a target exist
    assert nll_apart == pytest.approx(nll_whole, rel=1e-6)
    for a, w in zip(grads_apart, grads_whole):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)


def test_logits_changed_after_the_output_layer_keep_the_whole_model(batch_and_model):
    batch, model = batch_and_model

    def apart() -> bool:
        with fast_loss(TargetNLL(model), batch, contextlib.nullcontext, bf16=False) as loss:
            return isinstance(loss, TargetNLLApart)

    assert apart()
    forward = model.forward

    def soft_capped(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = 5.0 * torch.tanh(out.logits / 5.0)
        return out

    model.forward = soft_capped
    assert not apart()


def test_no_shift_bound_is_not_read_back_off_the_cpu():
    # On a device, reading the bound back would stall the host every batch: always shift.
    head = torch.nn.Linear(16, 50, device="meta")
    assert exp_needs_no_shift(torch.zeros(3, 16, device="meta"), head) is False


@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100: logits past exp's range, shifted by max
def test_summed_nll_is_cross_entropy(scale):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    states = (torch.randn(30, 16) * scale).requires_grad_()
    targets = torch.randint(0, 50, (30,))
    assert exp_needs_no_shift(states, head) == (scale == 1.0)
    ours = summed_nll(states, head, targets)
    ours.backward()
    grads = [states.grad, head.weight.grad, head.bias.grad]
    states.grad = head.weight.grad = head.bias.grad = None
    reference = torch.nn.functional.cross_entropy(head(states), targets, reduction="sum")
    reference.backward()
    torch.testing.assert_close(ours, reference)
    for a, b in zip(grads, [states.grad, head.weight.grad, head.bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
