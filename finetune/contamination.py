"""Contamination: n-gram overlap between training data and evaluation sets.

A training example that shares a long word n-gram (13 by default, as in the GPT-3 paper's
decontamination) with an evaluation example lets the model memorise the answer; the evaluation
then measures recall, not skill.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of a text; a text shorter than ``n`` words has none."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlap(
    train_texts: Sequence[str], eval_texts: Sequence[str], n: int = 13
) -> tuple[list[int], int]:
    """Indices of training texts that share an n-gram with the evaluation set, and how many
    evaluation texts share one with the training set."""
    eval_index: set[tuple[str, ...]] = set()
    for text in eval_texts:
        eval_index |= word_ngrams(text, n)
    train_hits = []
    train_index: set[tuple[str, ...]] = set()
    for i, text in enumerate(train_texts):
        grams = word_ngrams(text, n)
        if grams & eval_index:
            train_hits.append(i)
        train_index |= grams
    contaminated_eval = sum(1 for t in eval_texts if word_ngrams(t, n) & train_index)
    return train_hits, contaminated_eval
