"""Metrics on generations: reference metrics, their content control, and degeneration flags.

BLEU, chrF and TER come from sacrebleu. Per example we keep sacrebleu's sufficient statistics,
so the corpus score of any resample is sacrebleu's own score of the summed statistics: the
corpus value equals ``sacrebleu``'s command line, and the paired bootstrap is the one
``sacrebleu --paired-bs`` runs.

The content control scores each generation against the reference of another example (a seeded
derangement). A model that learned only the domain's words and style scores about as well
against the wrong references as against its own; the margin over the control is what answering
the question adds.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from evalkit.errors import EvalkitError

REFERENCE_METRICS = ("bleu", "chrf", "ter")
GENERATION_METRICS = (*REFERENCE_METRICS, "exact_match", "length")  # a task's choice
LOWER_IS_BETTER = {"ter"}


@cache
def sacrebleu_metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        return BLEU()
    if name == "chrf":
        return CHRF()
    if name == "ter":
        return TER()
    raise EvalkitError(f"unknown reference metric {name!r}: use {', '.join(REFERENCE_METRICS)}")


def check_pairs(hypotheses: Sequence[str], references: Sequence[str], what: str = "") -> None:
    if len(hypotheses) != len(references):
        raise EvalkitError(
            f"{what or 'metric'}: {len(hypotheses)} hypotheses but {len(references)} references",
            hint="give one reference per hypothesis, in the same order",
        )


def sentence_stats(name: str, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """sacrebleu's sufficient statistics, one row per example."""
    check_pairs(hypotheses, references, name)
    metric = sacrebleu_metric(name)
    stats = metric._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(stats, dtype=float).reshape(len(hypotheses), -1)


def corpus_from_stats(name: str, sums: np.ndarray) -> np.ndarray:
    """The corpus score of each row of summed statistics, by sacrebleu's own formula."""
    sums = np.ascontiguousarray(np.atleast_2d(sums), dtype=float)
    return _corpus_scores(name, sums.shape[1], sums.tobytes()).copy()


@lru_cache(maxsize=16)
def _corpus_scores(name: str, width: int, sums: bytes) -> np.ndarray:
    # Cached by content: a margin's resamples are its metric's and its control's, scored again.
    metric = sacrebleu_metric(name)
    rows = np.frombuffer(sums).reshape(-1, width)
    return np.array([metric._compute_score_from_stats(list(row)).score for row in rows])


def corpus_score(name: str, hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return float(corpus_from_stats(name, sentence_stats(name, hypotheses, references).sum(0))[0])


def signature(name: str) -> str:
    """sacrebleu's signature string (tokenizer, smoothing, version): report it with the score."""
    return str(sacrebleu_metric(name).get_signature())


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` that moves every index (n >= 2)."""
    if n < 2:
        raise EvalkitError("the content control needs at least two examples")
    rng = np.random.default_rng(seed)
    while True:  # about e tries on average
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def exact_match(hypothesis: str, reference: str) -> float:
    """1.0 when the two are equal after collapsing whitespace and case."""
    return float(" ".join(hypothesis.lower().split()) == " ".join(reference.lower().split()))


def distinct_n(text: str, n: int) -> float:
    """Distinct n-grams over all n-grams of whitespace tokens; 1.0 for too short a text."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


_BLANK_RUN = re.compile(r"\n\s*\n\s*\n\s*\n")


def is_repetitive(text: str) -> bool:
    """Loops small models fall into: a non-empty line three times or more, three blank lines in
    a row, or fewer than half of the word bigrams distinct (once there are at least four)."""
    lines = Counter(line.strip() for line in text.splitlines() if line.strip())
    if lines and max(lines.values()) >= 3:
        return True
    if _BLANK_RUN.search(text):
        return True
    words = text.split()
    return len(words) >= 5 and distinct_n(text, 2) < 0.5


DEGENERATION_FLAGS = ("empty", "repetitive", "cut")  # counted per run, not only averaged


def degeneration(text: str, finish_reason: str) -> dict[str, float]:
    """Per-response flags: empty, repetitive, cut at the token limit; and distinct-2."""
    return {
        "empty": float(not text.strip()),
        "repetitive": float(is_repetitive(text)),
        "cut": float(finish_reason == "length"),
        "distinct_2": distinct_n(text, 2),
    }


@dataclass(frozen=True)
class RunMetric:
    """A run-level metric made of per-example score columns.

    ``aggregate`` maps rows of column sums (the last column is the number of examples, as
    :func:`evalkit.stats.significance.bootstrap_sums` returns them) to the metric, so the
    same function gives the observed value and every bootstrap resample. ``test`` names the
    paired test: a sign-flip ``permutation`` test on the per-example differences of
    ``test_column``, ``mcnemar`` for pass/fail columns, or ``bootstrap`` (sacrebleu's paired
    bootstrap p-value) for corpus scores.
    """

    name: str
    columns: tuple[str, ...]
    aggregate: Callable[[np.ndarray], np.ndarray]
    higher_is_better: bool | None  # None: neither direction is better (length)
    test: str
    test_column: str | None = None
    # per-example value for ranking examples: that column, or the first minus the second
    example_columns: tuple[str, ...] = ()

    def value(self, table: np.ndarray) -> float:
        """The metric over per-example rows ``(n, len(columns))``."""
        sums = np.append(table.sum(axis=0), len(table))[None]
        return float(self.aggregate(sums)[0])

    def per_example(self, column: Callable[[str], np.ndarray]) -> np.ndarray:
        """Each example's own value, to rank examples by; ``column(name)`` gives a score column."""
        if self.example_columns:
            cols = [column(name) for name in self.example_columns]
            return cols[0] - cols[1] if len(cols) == 2 else cols[0]
        table = np.column_stack([column(name) for name in self.columns])
        return self.aggregate(np.hstack([table, np.ones((len(table), 1))]))


def _mean(sums: np.ndarray) -> np.ndarray:
    return sums[:, 0] / sums[:, -1]


def _exp_ratio(sums: np.ndarray) -> np.ndarray:
    return np.exp(sums[:, 0] / sums[:, 1])


def _bits_per_byte(sums: np.ndarray) -> np.ndarray:
    return sums[:, 0] / sums[:, 1] / math.log(2)


def _corpus(name: str, width: int, control: bool = False):
    def aggregate(sums: np.ndarray) -> np.ndarray:
        score = corpus_from_stats(name, sums[:, :width])
        return score - corpus_from_stats(name, sums[:, width : 2 * width]) if control else score

    return aggregate


def mean_metric(name: str, *, higher_is_better: bool | None, binary: bool = False) -> RunMetric:
    test = "mcnemar" if binary else "permutation"
    return RunMetric(name, (name,), _mean, higher_is_better, test, name)


def perplexity_metrics() -> list[RunMetric]:
    """Token and word perplexity and bits per byte, as lm-eval aggregates them."""
    return [
        RunMetric("perplexity", ("nll", "tokens"), _exp_ratio, False, "permutation", "nll"),
        RunMetric("word_perplexity", ("nll", "words"), _exp_ratio, False, "permutation", "nll"),
        RunMetric("bits_per_byte", ("nll", "bytes"), _bits_per_byte, False, "permutation", "nll"),
    ]


def stats_columns(name: str, width: int, control: bool = False) -> tuple[str, ...]:
    prefix = f"{name}_control" if control else name
    return tuple(f"{prefix}.{i}" for i in range(width))


def reference_metrics(name: str, width: int) -> list[RunMetric]:
    """A corpus metric, the same against deranged references, and the margin between them."""
    own, wrong = stats_columns(name, width), stats_columns(name, width, control=True)
    better = name not in LOWER_IS_BETTER
    sentence, control = f"{name}_sentence", f"{name}_control_sentence"
    return [
        RunMetric(name, own, _corpus(name, width), better, "bootstrap", None, (sentence,)),
        # Against the wrong references: a diagnostic, neither direction is better.
        RunMetric(
            f"{name}_control", wrong, _corpus(name, width), None, "bootstrap", None, (control,)
        ),
        RunMetric(
            f"{name}_margin",
            own + wrong,
            _corpus(name, width, True),
            better,
            "bootstrap",
            None,
            (sentence, control),
        ),
    ]


def generation_metrics(names: Sequence[str], widths: dict[str, int]) -> list[RunMetric]:
    out = []
    for name in names:
        if name in REFERENCE_METRICS:
            out += reference_metrics(name, widths[name])
        elif name == "exact_match":
            out.append(mean_metric("exact_match", higher_is_better=True, binary=True))
        elif name == "length":
            out.append(RunMetric("length", ("length",), _mean, None, "permutation", "length"))
    for flag in DEGENERATION_FLAGS:
        out.append(mean_metric(flag, higher_is_better=False, binary=True))
    out.append(mean_metric("distinct_2", higher_is_better=True))
    return out
