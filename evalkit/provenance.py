"""Provenance: what decides a number, recorded beside it.

The hashes of a model directory and of its chat template, the hash of a file, the code's
version, and the lineage record that training leaves beside the weights. Training,
evaluation, the gate and serving all record these, so a number can always be traced to the
exact weights, template, data and code that produced it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from evalkit import __version__

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LINEAGE_FILE = "evalkit_lineage.json"  # written by training beside the weights; not hashed
# Files whose bytes decide what a model computes; logs and model cards do not count.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")


def model_hash(path: str | Path) -> str:
    """sha256 over the weights, config and tokenizer files of a model directory."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.suffix not in _HASHED_SUFFIXES or file.name.startswith("evalkit_"):
            continue
        digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def chat_template_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's chat template; training, evaluation and serving all record it."""
    template = tokenizer.chat_template
    if not template:
        return "none"
    if isinstance(template, dict):  # named templates: hash them in a stable order
        template = "\n".join(f"{k}\n{v}" for k, v in sorted(template.items()))
    return hashlib.sha256(template.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes; of a folder, over its files' names and bytes in order."""
    if Path(path).is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(sha256_file(file).encode())
        return digest.hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """The package version, and the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def model_lineage(model_path: Path) -> dict:
    """What the model came from: the training run's record beside its weights, if any."""
    file = model_path / LINEAGE_FILE
    if file.is_file():
        return json.loads(file.read_text())
    return {}
