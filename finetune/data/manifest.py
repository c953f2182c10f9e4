"""A dataset directory's split files against its manifest: the hashes that tie a trained model to
the data it saw, and which files changed since preparation."""

from __future__ import annotations

from pathlib import Path

from evalkit.provenance import sha256_file
from finetune.data.split import SPLITS


def split_hashes(directory: str | Path) -> dict[str, str]:
    """The sha256 of each split file a dataset directory holds now."""
    files = [Path(directory) / f"{s}.jsonl" for s in SPLITS]
    return {f.name: sha256_file(f) for f in files if f.is_file()}


def modified_files(manifest: dict, hashes: dict[str, str]) -> list[str]:
    """The split files whose hash (``hashes``, as now) is not the one the manifest recorded:
    edited, replaced or removed since preparation."""
    return [
        name for name, digest in manifest.get("files", {}).items() if hashes.get(name) != digest
    ]
