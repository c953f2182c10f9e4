"""Statistics for comparing runs: pure functions over per-example values.

Every resampling function takes a ``seed``, so the same inputs give the same interval. Intervals
are percentile bootstrap intervals; the paired versions resample examples (the same indices for
baseline and candidate), so what varies between examples cancels out of the difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from scipy import stats

from evalkit.stats import ALPHA, N_RESAMPLES, SEED

# Resampled example slots per chunk: bounds memory. 8 MB arrays stay under glibc's 32 MB mmap
# threshold; at 32 MB every chunk was a fresh mapping, and page faults doubled compare's time.
CHUNK = 1 << 20


def resample_counts(
    n: int, n_resamples: int, seed: int, groups: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Bootstrap resamples as count matrices ``(k, n)``: how often each example was drawn.

    Draws ``rng.integers(0, n, (n_resamples, n))`` from ``numpy.random.default_rng(seed)``, the
    same draws as sacrebleu's paired bootstrap for the same seed, in chunks of rows. With
    ``groups`` (a group id per example), whole groups are drawn instead (a cluster bootstrap: all
    ratings of one prompt together), and each member counts as often as its group was drawn.
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        units = int(inverse.max()) + 1
    else:
        inverse, units = None, n
    per_chunk = max(1, CHUNK // max(units, 1))
    done = 0
    while done < n_resamples:
        k = min(per_chunk, n_resamples - done)
        drawn = rng.integers(0, units, size=(k, units))
        flat = (drawn + np.arange(k)[:, None] * units).ravel()
        counts = np.bincount(flat, minlength=k * units).reshape(k, units).astype(float)
        yield counts if inverse is None else counts[:, inverse]
        done += k


def bootstrap_sums(
    columns: np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Column sums of each resample, ``(n_resamples, m + 1)``; the last column is its size.

    ``columns`` is ``(n, m)``, or ``(n,)`` for one column. Any statistic made of sums (a mean, a
    ratio such as perplexity, corpus BLEU from its sufficient statistics) is a function of these.
    """
    columns = np.asarray(columns, dtype=float)
    if columns.ndim == 1:
        columns = columns[:, None]
    if len(columns) == 0:
        raise ValueError("cannot bootstrap an empty sample")
    with_size = np.hstack([columns, np.ones((len(columns), 1))])
    return np.vstack(
        [c @ with_size for c in resample_counts(len(columns), n_resamples, seed, groups)]
    )


def observed_sums(columns: np.ndarray) -> np.ndarray:
    """The sums of the sample itself, shaped like one row of :func:`bootstrap_sums`."""
    columns = np.asarray(columns, dtype=float)
    if columns.ndim == 1:
        columns = columns[:, None]
    return np.append(columns.sum(axis=0), len(columns))[None]


def mean_of_sums(sums: np.ndarray) -> np.ndarray:
    return sums[:, 0] / sums[:, -1]


def percentile_interval(distribution: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(distribution, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    values: np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    sums = bootstrap_sums(values, n_resamples=n_resamples, seed=seed, groups=groups)
    return percentile_interval(mean_of_sums(sums), confidence)


def paired_bootstrap(
    baseline: np.ndarray,
    candidate: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] = mean_of_sums,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> tuple[float, float, float, np.ndarray]:
    """``statistic(candidate) - statistic(baseline)`` with a paired bootstrap interval.

    Both are per-example columns aligned by example; each resample draws the same examples from
    both. ``statistic`` maps rows of sums (see :func:`bootstrap_sums`) to values. Returns the
    observed difference, the interval and the resampled differences.
    """
    baseline, candidate = np.asarray(baseline, float), np.asarray(candidate, float)
    if baseline.shape != candidate.shape:
        raise ValueError(f"unpaired samples: {baseline.shape} vs {candidate.shape}")
    if baseline.ndim == 1:
        baseline, candidate = baseline[:, None], candidate[:, None]
    m = baseline.shape[1]
    sums = bootstrap_sums(np.hstack([baseline, candidate]), n_resamples=n_resamples, seed=seed)
    size = sums[:, -1:]
    dist = statistic(np.hstack([sums[:, m:-1], size])) - statistic(np.hstack([sums[:, :m], size]))
    observed = float(statistic(observed_sums(candidate))[0] - statistic(observed_sums(baseline))[0])
    low, high = percentile_interval(dist, confidence)
    return observed, low, high, dist


def permutation_p_values(
    differences: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """Two-sided paired permutation (sign-flip) tests of a zero mean, one per column.

    The test of ``scipy.stats.permutation_test(..., permutation_type="samples")`` (checked in
    the tests), with one sign matrix shared by all columns: scipy's general loop is ~20x
    slower at 10,000 pairs. p = (1 + #{|permuted mean| >= |observed mean|}) / (1 + resamples).
    """
    differences = np.asarray(differences, dtype=float)
    if differences.ndim == 1:
        differences = differences[:, None]
    n = len(differences)
    observed = np.abs(differences.mean(axis=0)) * (1 - 1e-12)
    hits = np.zeros(differences.shape[1])
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK // max(n, 1))
    for start in range(0, n_resamples, per_chunk):
        k = min(per_chunk, n_resamples - start)
        signs = rng.integers(0, 2, size=(k, n)) * 2.0 - 1.0
        hits += np.sum(np.abs(signs @ differences) / n >= observed, axis=0)
    p = (1 + hits) / (1 + n_resamples)
    p[~np.any(differences, axis=0)] = 1.0  # nothing changed
    if n < 2:
        p[:] = 1.0
    return p


def permutation_p_value(
    differences: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> float:
    """:func:`permutation_p_values` of one sample of paired differences."""
    return float(permutation_p_values(differences, n_resamples=n_resamples, seed=seed)[0])


def mcnemar_p_value(baseline: np.ndarray, candidate: np.ndarray) -> float:
    """Exact McNemar test for paired pass/fail outcomes (a binomial test on discordant pairs)."""
    baseline, candidate = np.asarray(baseline, bool), np.asarray(candidate, bool)
    only_baseline = int(np.sum(baseline & ~candidate))
    only_candidate = int(np.sum(~baseline & candidate))
    discordant = only_baseline + only_candidate
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(only_candidate, discordant, 0.5).pvalue)


def min_detectable_difference(
    differences: np.ndarray, *, alpha: float = ALPHA, power: float = 0.8
) -> float:
    """The smallest mean paired difference a two-sided test at ``alpha`` detects with ``power``."""
    differences = np.asarray(differences, dtype=float)
    n = len(differences)
    if n < 2:
        return math.inf
    sd = float(np.std(differences, ddof=1))
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * sd / math.sqrt(n))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if trials == 0:
        return 0.0, 1.0
    ci = stats.binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)
