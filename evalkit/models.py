"""Loading a model directory (Hugging Face format).

Every part loads models through :func:`load_model`, so a missing or corrupt directory gives the
same clear error everywhere. What identifies a model is in :mod:`evalkit.provenance`.
"""

from __future__ import annotations

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
