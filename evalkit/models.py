"""Loading a model directory (Hugging Face format).

Every part loads models through :func:`load_model`, so a missing or corrupt directory gives the
same clear error everywhere. What identifies a model is in :mod:`evalkit.provenance`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from evalkit.errors import EvalkitError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_MODEL_DIR_HINT = "pass a directory written by save_pretrained (config.json, weights, tokenizer)"


def pick_device(device: str | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when present, else the CPU."""
    import torch

    if device:
        try:
            picked = torch.device(device)
        except RuntimeError:
            raise EvalkitError(
                f"device {device!r} is not a device", hint="cpu, cuda or cuda:N"
            ) from None
        if picked.type == "cuda" and not torch.cuda.is_available():
            raise EvalkitError(f"device {device!r}: this machine has no CUDA", hint="use cpu")
        return picked
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise EvalkitError(f"model directory {path} does not exist", hint=_MODEL_DIR_HINT)
    if not (path / "config.json").is_file():
        raise EvalkitError(
            f"{path} holds no config.json, so it is not a model directory", hint=_MODEL_DIR_HINT
        )


def load_tokenizer(
    path: str | Path, *, require_chat_template: bool = True
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a local model directory; it must carry a chat template."""
    from transformers import AutoTokenizer

    path = Path(path)
    _check_model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise EvalkitError(
            f"cannot load the tokenizer in {path}: {exc}", hint=_MODEL_DIR_HINT
        ) from exc
    if require_chat_template and not tokenizer.chat_template:
        raise EvalkitError(
            f"the tokenizer in {path} has no chat template",
            hint="set tokenizer.chat_template and save it again; conversations need a template",
        )
    return tokenizer


def load_model(
    path: str | Path, *, device: str | None = None, require_chat_template: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, in eval mode.

    >>> model, tokenizer = load_model(".evalkit/models/base-micro-...")
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = load_tokenizer(path, require_chat_template=require_chat_template)
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
    except Exception as exc:
        raise EvalkitError(
            f"cannot load the model weights in {path}: {exc}", hint=_MODEL_DIR_HINT
        ) from exc
    model.to(pick_device(device)).eval()
    return model, tokenizer


def output_layer_split(model):
    """``(body, output layer)`` of a causal LM whose logits may be ``output(body(...)[0])``, or
    None.

    Scoring or training through them runs the output layer only where a token is scored:
    padding, context and masked positions cost no vocabulary-wide logits. Models that change
    the logits afterwards (soft-capping, scaling) do not fit; callers compare the two ways on
    a few rows before taking this one.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(head, torch.nn.Linear) or not isinstance(body, torch.nn.Module):
        return None
    return body, head


def base2_output_layer(head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's weight and bias scaled by log2(e): its logits in base 2.

    A log-sum-exp over the vocabulary then takes exp2, which runs about twice as fast as exp
    on the CPU (AVX2), and the scaling costs a pass over the weights, not over the logits.
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
    import torch

    if states.device.type != "cpu":
        return False
    with torch.no_grad():
        rows = torch.linalg.vector_norm(states.float(), dim=1)
        bound = rows * torch.linalg.vector_norm(head.weight.float(), dim=1).max()
        if head.bias is not None:
            bound += head.bias.abs().max().float()
        return bool((bound < 87 - math.log(head.weight.shape[0])).all())
