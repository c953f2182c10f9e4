"""Loading a model directory (Hugging Face format).

Every part loads models through :func:`load_model`, so a missing or corrupt directory gives the
same clear error everywhere. What identifies a model is in :mod:`evalkit.provenance`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from evalkit.errors import EvalkitError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_MODEL_DIR_HINT = "pass a directory written by save_pretrained (config.json, weights, tokenizer)"
# What a Hugging Face tokenizer is loaded from: at least one of these (fast, SentencePiece,
# byte-level BPE or WordPiece vocabularies); without any, transformers builds an empty tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


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


def check_model_dir(path: str | Path, *, weights: bool = True) -> Path:
    """Say what a model directory lacks before transformers reads it: every command loads models
    through here, so a broken directory gets the same message everywhere.

    Checked: that it is a directory, that config.json is valid JSON naming a ``model_type``,
    that tokenizer files are there and, when ``weights``, the weights.
    """
    path = Path(path)
    if path.is_file():
        raise EvalkitError(f"{path} is a file, not a model directory", hint=_MODEL_DIR_HINT)
    if not path.is_dir():
        raise EvalkitError(f"model directory {path} does not exist", hint=_MODEL_DIR_HINT)
    config = path / "config.json"
    if not config.is_file():
        raise EvalkitError(
            f"{path} holds no config.json, so it is not a model directory", hint=_MODEL_DIR_HINT
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as exc:  # not JSON, not UTF-8, or not an object
        reason = str(exc) if isinstance(exc, ValueError) else "not a JSON object"
        raise EvalkitError(
            f"{config} is corrupt: {reason}",
            hint="restore it from the model's source (save_pretrained writes it)",
        ) from None
    if not model_type:
        raise EvalkitError(
            f"{config} names no model_type, so no model class can read it",
            hint="restore it from the model's source (save_pretrained writes it)",
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise EvalkitError(
            f"{path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})",
            hint="save the tokenizer into the directory too: tokenizer.save_pretrained(DIR)",
        )
    if weights and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise EvalkitError(
            f"{path} has no weights (none of {', '.join(WEIGHT_FILES)})",
            hint="save the model into the directory: model.save_pretrained(DIR)",
        )
    return path


def load_tokenizer(
    path: str | Path, *, require_chat_template: bool = True
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a local model directory; it must carry a chat template."""
    from transformers import AutoTokenizer

    path = check_model_dir(path, weights=False)
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
    path: str | Path,
    *,
    device: str | None = None,
    require_chat_template: bool = True,
    weights: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, in eval mode.

    ``weights=False``: the model's architecture on PyTorch's meta device, with its config and
    generation config but no weights, for a process that reads them and decodes elsewhere.

    >>> model, tokenizer = load_model(".evalkit/models/base-micro-...")
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = check_model_dir(path)
    tokenizer = load_tokenizer(path, require_chat_template=require_chat_template)
    try:
        if weights:
            model = AutoModelForCausalLM.from_pretrained(path)
        else:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
            if (path / "generation_config.json").exists():
                model.generation_config = GenerationConfig.from_pretrained(path)
    except Exception as exc:
        raise EvalkitError(
            f"cannot load the model {'weights' if weights else 'config'} in {path}: {exc}",
            hint=_MODEL_DIR_HINT,
        ) from exc
    if weights:
        model.to(pick_device(device))
    model.eval()
    return model, tokenizer
