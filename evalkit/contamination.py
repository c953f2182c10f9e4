"""Contamination: n-gram overlap between training data and evaluation sets.

A training example that shares a long word n-gram (13 by default, as in the GPT-3 paper's
decontamination) with an evaluation example lets the model memorise the answer; the evaluation
then measures recall, not skill. Data preparation and the gate both check it here, on the same
text of a conversation (its contents, role names left out), so they cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NGRAM = 13  # words in a shared n-gram (GPT-3's decontamination)
_WORD = re.compile(r"\w+")


def conversation_text(messages: Sequence[dict]) -> str:
    """The text of a conversation that contamination is checked on: its turns' contents."""
    return "\n".join(str(m.get("content") or "") for m in messages)


def word_ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of a text; a text shorter than ``n`` words has none."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlap(
    train_texts: Sequence[str], eval_texts: Sequence[str], n: int = NGRAM
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
