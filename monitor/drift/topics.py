"""A light topic classifier over prompt embeddings: the nearest centroid (by cosine).

Trained on labelled conversations (the chatterbot topics, the support FAQ, chit-chat: see
``finetune.data.corpora.labelled_prompts``), with a stratified, seeded hold-out whose accuracy is
kept with the model and shown wherever the topic feature is. Saved as one ``.npz`` file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalkit.errors import EvalkitError

HOLD_OUT = 0.2
MIN_HELD = 5


@dataclass(frozen=True)
class TopicModel:
    labels: tuple[str, ...]
    centroids: np.ndarray  # one unit vector per label
    accuracy: float  # on the held-out conversations
    held_out: int

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """The label of each (unit-normalized) embedding."""
        if len(embeddings) == 0:
            return np.array([], dtype=object)
        return np.asarray(self.labels, dtype=object)[(embeddings @ self.centroids.T).argmax(1)]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(
            tmp,
            labels=np.asarray(self.labels),
            centroids=self.centroids,
            accuracy=self.accuracy,
            held_out=self.held_out,
        )
        tmp.rename(path)

    @classmethod
    def load(cls, path: str | Path) -> TopicModel:
        with np.load(path) as data:
            return cls(
                tuple(str(x) for x in data["labels"]),
                data["centroids"],
                float(data["accuracy"]),
                int(data["held_out"]),
            )


def _centroids(embeddings: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    centroids = np.stack([embeddings[labels == n].mean(0) for n in names])
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def train_topics(embeddings: np.ndarray, labels: Sequence[str], seed: int = 0) -> TopicModel:
    """Fit on 80% of each label, measure accuracy on the other 20%, then refit on all."""
    labels = np.asarray(labels, dtype=object)
    names = sorted(set(labels))
    if len(names) < 2:
        raise EvalkitError("a topic classifier needs conversations of two topics or more")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for name in names:  # a topic of fewer than MIN_HELD conversations is only trained on
        members = np.flatnonzero(labels == name)
        if len(members) >= MIN_HELD:
            test[rng.permutation(members)[: round(HOLD_OUT * len(members))]] = True
    held = TopicModel(tuple(names), _centroids(embeddings[~test], labels[~test], names), 0.0, 0)
    accuracy = float((held.predict(embeddings[test]) == labels[test]).mean())
    return TopicModel(
        tuple(names), _centroids(embeddings, labels, names), accuracy, int(test.sum())
    )
