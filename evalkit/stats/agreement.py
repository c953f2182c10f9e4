"""Inter-annotator agreement and annotator quality: pure functions over rating arrays.

Krippendorff's alpha (nominal, ordinal, interval) takes its value from the ``krippendorff``
package; Cohen's kappa (two raters) and Fleiss' kappa (a fixed number of raters per item) are
computed here. Each comes with a percentile bootstrap interval that resamples items (all ratings
of an item together) through :func:`evalkit.stats.significance.resample_counts`: the
statistics are functions of per-item sums, so every resample is one count-matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import krippendorff
import numpy as np

from evalkit.stats import N_RESAMPLES, SEED
from evalkit.stats.significance import percentile_interval, resample_counts, wilson_interval

LEVELS = ("nominal", "ordinal", "interval")


@dataclass(frozen=True)
class Agreement:
    """An agreement coefficient with its bootstrap interval over items."""

    method: str
    value: float
    low: float
    high: float
    items: int
    ratings: int
    n_resamples: int
    seed: int

    def __str__(self) -> str:
        return (
            f"{self.method} = {self.value:.3f} [{self.low:.3f}, {self.high:.3f}] "
            f"({self.items} items, {self.ratings} ratings; {self.n_resamples} resamples, "
            f"seed {self.seed})"
        )


def reliability_matrix(
    triples: Sequence[tuple[str, str, object]],
) -> tuple[np.ndarray, list[str], list[str]]:
    """(rater, item, value) triples as a raters x items array, NaN where a rater gave none.

    Values must be numbers; map categories to codes first. Returns the matrix, raters, items.
    """
    raters = sorted({r for r, _, _ in triples})
    items = sorted({i for _, i, _ in triples})
    row = {r: k for k, r in enumerate(raters)}
    col = {i: k for k, i in enumerate(items)}
    data = np.full((len(raters), len(items)), np.nan)
    for rater, item, value in triples:
        data[row[rater], col[item]] = float(value)
    return data, raters, items


def _value_counts(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item, how many raters gave each value (items x values), and the values."""
    values = np.unique(data[~np.isnan(data)])
    counts = np.stack([(data == v).sum(axis=0) for v in values], axis=1).astype(float)
    return counts, values


def _alpha_from_coincidences(o: np.ndarray, values: np.ndarray, level: str) -> np.ndarray:
    """Alpha for each coincidence matrix in ``o`` (resamples x values x values)."""
    n_c = o.sum(axis=2)
    n = n_c.sum(axis=1)
    if level == "nominal":
        delta = np.broadcast_to(1.0 - np.eye(len(values)), o.shape)
    elif level == "interval":
        delta = np.broadcast_to((values[:, None] - values[None, :]) ** 2, o.shape)
    else:  # ordinal: marginal mass between the two ranks, less half of each end, squared
        cum = np.cumsum(n_c, axis=1)
        ranks = np.arange(len(values))
        lo, hi = np.minimum.outer(ranks, ranks), np.maximum.outer(ranks, ranks)
        between = cum[:, hi] - cum[:, lo] + n_c[:, lo]
        delta = (between - (n_c[:, :, None] + n_c[:, None, :]) / 2) ** 2
    observed = (o * delta).sum(axis=(1, 2))
    expected = (n_c[:, :, None] * n_c[:, None, :] * delta).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - (n - 1) * observed / expected


def krippendorff_alpha(
    data: np.ndarray,
    level: str = "nominal",
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> Agreement:
    """Krippendorff's alpha of a raters x items array (NaN = no rating), with a bootstrap CI.

    The value is ``krippendorff.alpha``. Resamples draw items with replacement; each item adds
    its coincidences ``(n_uc n_uk - [c=k] n_uc) / (m_u - 1)`` to the resample's matrix, so all
    resamples come from one product of the count matrix with the per-item coincidences.

    >>> krippendorff_alpha(np.array([[1, 2, 3, 3, 2], [1, 2, 3, 4, 2]]), "ordinal").value
    """
    if level not in LEVELS:
        raise ValueError(f"level {level!r}: one of {', '.join(LEVELS)}")
    data = np.asarray(data, dtype=float)
    counts, values = _value_counts(data)
    pairable = counts.sum(axis=1) >= 2
    counts = counts[pairable]
    if len(values) < 2 or len(counts) < 2:
        raise ValueError("alpha needs at least two items rated twice and two distinct values")
    value = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    m = counts.sum(axis=1)
    per_item = (counts[:, :, None] * counts[:, None, :]) - counts[:, :, None] * np.eye(len(values))
    per_item = (per_item / (m - 1)[:, None, None]).reshape(len(counts), -1)
    shape = (-1, len(values), len(values))
    alphas = np.concatenate(
        [
            _alpha_from_coincidences((c @ per_item).reshape(shape), values, level)
            for c in resample_counts(len(counts), n_resamples, seed)
        ]
    )
    low, high = percentile_interval(alphas[np.isfinite(alphas)], confidence)
    return Agreement(
        f"Krippendorff's alpha ({level})",
        value,
        low,
        high,
        len(counts),
        int(m.sum()),
        n_resamples,
        seed,
    )


def _kappa(observed: np.ndarray, chance: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (observed - chance) / (1.0 - chance)


def cohen_kappa(
    first: Sequence,
    second: Sequence,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> Agreement:
    """Cohen's kappa of two raters' labels on the same items, with a bootstrap CI over items.

    kappa = (p_o - p_e) / (1 - p_e): observed agreement against the agreement expected from
    each rater's own label frequencies.
    """
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 1 or len(first) < 2:
        raise ValueError("cohen_kappa needs two equally long label sequences (>= 2 items)")
    labels, codes = np.unique(np.concatenate([first, second]), return_inverse=True)
    a, b = codes[: len(first)], codes[len(first) :]
    k = len(labels)
    # Per item: one-hot of rater 1's label, of rater 2's, and whether they agree.
    columns = np.hstack([np.eye(k)[a], np.eye(k)[b], (a == b)[:, None]])

    def kappa(sums: np.ndarray) -> np.ndarray:
        n = sums[:, -1:]
        p1, p2 = sums[:, :k] / n, sums[:, k : 2 * k] / n
        return _kappa(sums[:, 2 * k] / n[:, 0], (p1 * p2).sum(axis=1))

    observed = kappa(np.append(columns.sum(axis=0), len(a))[None])[0]
    resampled = np.concatenate(
        [
            kappa(np.hstack([c @ columns, c.sum(axis=1, keepdims=True)]))
            for c in resample_counts(len(a), n_resamples, seed)
        ]
    )
    low, high = percentile_interval(resampled[np.isfinite(resampled)], confidence)
    return Agreement(
        "Cohen's kappa", float(observed), low, high, len(a), 2 * len(a), n_resamples, seed
    )


def fleiss_kappa(
    counts: np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> Agreement:
    """Fleiss' kappa from an items x categories array of how many raters chose each category.

    Every item must have the same number of ratings m. kappa = (P - P_e) / (1 - P_e) with P the
    mean per-item agreement sum_j n_ij (n_ij - 1) / (m (m - 1)) and P_e = sum_j p_j^2.
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    if counts.ndim != 2 or len(counts) < 2 or np.any(m != m[0]) or m[0] < 2:
        raise ValueError(
            "fleiss_kappa needs >= 2 items, each with the same number (>= 2) of ratings"
        )
    m = m[0]
    agreement = (counts * (counts - 1)).sum(axis=1) / (m * (m - 1))
    columns = np.hstack([agreement[:, None], counts])

    def kappa(sums: np.ndarray, n_items: np.ndarray) -> np.ndarray:
        p = sums[:, 1:] / (n_items[:, None] * m)
        return _kappa(sums[:, 0] / n_items, (p**2).sum(axis=1))

    observed = kappa(columns.sum(axis=0)[None], np.array([len(counts)], float))[0]
    resampled = np.concatenate(
        [kappa(c @ columns, c.sum(axis=1)) for c in resample_counts(len(counts), n_resamples, seed)]
    )
    low, high = percentile_interval(resampled[np.isfinite(resampled)], confidence)
    return Agreement(
        "Fleiss' kappa",
        float(observed),
        low,
        high,
        len(counts),
        int(m * len(counts)),
        n_resamples,
        seed,
    )


@dataclass(frozen=True)
class AnnotatorStats:
    """One annotator's output and accuracy on hidden gold items."""

    annotator: str
    ratings: int
    skips: int
    gold_checked: int
    gold_correct: int
    gold_low: float  # Wilson interval of the gold accuracy
    gold_high: float
    median_shown_s: float | None
    per_hour: float | None  # ratings per hour between the first and the last

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_checked if self.gold_checked else None


def annotator_stats(
    annotator: str,
    shown_ms: Sequence[float],
    submitted_s: Sequence[float],
    gold_correct: Sequence[bool],
    *,
    skips: int = 0,
    confidence: float = 0.95,
) -> AnnotatorStats:
    """Summarize an annotator's counted ratings: display times, submission times (seconds on
    any clock) and, for the gold items among them, whether each answer was right."""
    correct = int(np.sum(gold_correct))
    low, high = wilson_interval(correct, len(gold_correct), confidence)
    span_h = (max(submitted_s) - min(submitted_s)) / 3600 if len(submitted_s) > 1 else 0.0
    return AnnotatorStats(
        annotator,
        len(shown_ms),
        skips,
        len(gold_correct),
        correct,
        low,
        high,
        float(np.median(shown_ms)) / 1000 if len(shown_ms) else None,
        (len(submitted_s) - 1) / span_h if span_h > 0 else None,
    )
