"""Drift statistics: pure functions that compare a current sample with a reference.

Numeric features: PSI over the reference's deciles, the two-sample Kolmogorov-Smirnov test and
the Wasserstein distance normalized by the reference's standard deviation. Categorical features:
Jensen-Shannon distance, the chi-square test and PSI. Embeddings: squared MMD with random Fourier
features and a permutation test. Many features and windows: Holm and Benjamini-Hochberg.

The values equal scipy's (``ks_2samp``, ``wasserstein_distance``, ``jensenshannon``,
``chisquare``, ``false_discovery_control``); a reference is prepared once (sorted, binned) so that
a window of current values is judged in O(m log n) for m current and n reference values.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import special, stats
from scipy.spatial import distance

# Proportions below this are raised to it in PSI and in chi-square's expected counts: an empty
# bin would make both infinite. Evidently fills empty bins with the same 1e-4.
PROPORTION_FLOOR = 1e-4
# The smallest standard deviation that normalizes Wasserstein (Evidently's guard, 0.001), so a
# constant reference gives a finite distance.
SCALE_FLOOR = 1e-3
# Up to this effective size n m / (n + m), the KS p-value is scipy's (Smirnov's distribution for
# that size, whose evaluation costs O(size) in the tail: over a second at 500,000); above, the
# limiting Kolmogorov distribution, within 3% of it wherever p > 1e-10.
KS_EXACT_SIZE = 10_000
NONE_CATEGORY = "(none)"  # a missing categorical value


@dataclass(frozen=True)
class NumericReference:
    """A numeric feature's reference, prepared once for many windows.

    ``sorted``: the reference values in order; ``edges``: PSI bin edges, ``-inf`` first and
    ``+inf`` last, bin ``i`` holding ``edges[i] <= x < edges[i + 1]``; ``proportions``: the
    reference's share of each bin; ``scale``: its standard deviation, at least ``SCALE_FLOOR``.
    """

    sorted: np.ndarray
    edges: np.ndarray
    proportions: np.ndarray
    scale: float

    @cached_property
    def _prefix(self) -> tuple[float, np.ndarray]:
        """(centre, cumulative sums of ``sorted - centre`` starting at 0), for Wasserstein.
        Centring on the median keeps the sums small when the values sit far from zero."""
        centre = float(self.sorted[len(self.sorted) // 2])
        return centre, np.concatenate([[0.0], np.cumsum(self.sorted - centre)])


@dataclass(frozen=True)
class NumericDrift:
    psi: float
    ks: float  # the Kolmogorov-Smirnov statistic: the largest gap between the two CDFs
    ks_p: float
    wasserstein: float  # in reference standard deviations


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical feature's reference: its categories (sorted), their shares, its size."""

    categories: tuple[str, ...]
    proportions: np.ndarray
    count: int


@dataclass(frozen=True)
class CategoricalDrift:
    jensen_shannon: float
    chi2: float
    chi2_p: float
    psi: float


def _finite(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} values: expected a non-empty 1-D array, got shape {array.shape}")
    bad = np.count_nonzero(~np.isfinite(array))
    if bad:
        raise ValueError(f"{name} values: {bad} of {array.size} are NaN or infinite; drop them")
    return array


def _bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.diff(np.searchsorted(sorted_values, edges, side="left"))


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index, sum((c - r) * ln(c / r)), both floored at PROPORTION_FLOOR."""
    r = np.maximum(reference, PROPORTION_FLOOR)
    c = np.maximum(current, PROPORTION_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_reference(values, n_bins: int = 10) -> NumericReference:
    """Prepare a numeric reference. PSI bins are fixed here, from the reference alone: edges at
    its ``1/n_bins .. (n_bins-1)/n_bins`` quantiles (deciles by default; numpy's linear
    interpolation), duplicates removed (discrete values give fewer bins), ends open."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be 2 or more, got {n_bins}")
    ordered = np.sort(_finite(values, "reference"))
    inner = np.unique(np.quantile(ordered, np.arange(1, n_bins) / n_bins))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    proportions = _bin_counts(ordered, edges) / ordered.size
    return NumericReference(ordered, edges, proportions, max(float(np.std(ordered)), SCALE_FLOOR))


def numeric_psi(ref: NumericReference, current) -> float:
    """PSI alone, as :func:`numeric_drift` computes it, without sorting ``current``: the
    effect size a detector checks first, before it pays for the tests."""
    cur = _finite(current, "current")
    bins = np.searchsorted(ref.edges, cur, side="right") - 1  # edges[i] <= x < edges[i + 1]
    counts = np.bincount(bins, minlength=ref.edges.size - 1)
    return _psi(ref.proportions, counts / cur.size)


def numeric_drift(ref: NumericReference, current) -> NumericDrift:
    """PSI, KS (statistic and p-value) and normalized Wasserstein of ``current`` against ``ref``.

    KS equals ``scipy.stats.ks_2samp(reference, current)``: the statistic exactly; the p-value
    is its ``method="asymp"`` one (scipy's default too once a sample exceeds 10,000 values) up
    to an effective size of KS_EXACT_SIZE, the limiting distribution beyond. Wasserstein equals
    ``scipy.stats.wasserstein_distance(reference, current) / ref.scale``.
    """
    cur = np.sort(_finite(current, "current"))
    a, n, m = ref.sorted, ref.sorted.size, cur.size
    # The CDF gap only changes at the values of either sample. Between two distinct current
    # values the current CDF is flat, so only the reference counts at the current values matter.
    last = np.flatnonzero(np.append(cur[1:] != cur[:-1], True))
    u = cur[last]  # distinct current values
    cur_le = last + 1  # current values <= u
    cur_lt = np.concatenate([[0], cur_le[:-1]])  # current values < u
    ref_le = np.searchsorted(a, u, side="right")
    ref_lt = np.searchsorted(a, u, side="left")
    # At u, and at the last reference value below u: the same points scipy evaluates.
    at_u = np.max(np.abs(ref_le / n - cur_le / m))
    below_u = np.max(np.abs(ref_lt / n - cur_lt / m))
    ks = float(max(at_u, below_u))
    size = n * m / (n + m)
    if size <= KS_EXACT_SIZE:
        ks_p = stats.kstwo.sf(ks, np.round(size))
    else:
        ks_p = special.kolmogorov(math.sqrt(size) * ks)
    ks_p = float(np.clip(ks_p, 0.0, 1.0))
    return NumericDrift(
        psi=_psi(ref.proportions, _bin_counts(cur, ref.edges) / m),
        ks=ks,
        ks_p=ks_p,
        wasserstein=_wasserstein(ref, u, ref_le, cur_le, m) / ref.scale,
    )


def _wasserstein(ref: NumericReference, u: np.ndarray, ref_le: np.ndarray, cur_le, m: int):
    """The integral of |F_ref - F_cur| over the line, for distinct current values ``u`` with
    ``ref_le`` reference and ``cur_le`` of the ``m`` current values <= each. With G(x), the
    integral of F_ref up to x (closed form from the prefix sums), each stretch between two
    current values costs O(1): F_cur is flat there and F_ref - F_cur changes sign once, at the
    first reference value where F_ref >= F_cur."""
    a, n = ref.sorted, ref.sorted.size
    centre, prefix = ref._prefix

    def integral(x, below):  # G(x); ``below``: reference values <= x
        return (below * (x - centre) - prefix[below]) / n

    g_u = integral(u, ref_le)
    # Before the first current value F_cur = 0; after the last, F_cur = 1.
    k = ref_le[-1]
    tails = g_u[0] + ((prefix[n] - prefix[k]) - (n - k) * (u[-1] - centre)) / n
    lo, hi, counts = u[:-1], u[1:], cur_le[:-1]
    needed = -(-counts * n // m)  # reference values for F_ref >= F_cur: ceil(counts * n / m)
    crossing = np.clip(a[needed - 1], lo, hi)
    # G's formula holds with any count k where a[k-1] <= x <= a[k]; this one is such a k.
    g_x = integral(crossing, np.clip(needed, ref_le[:-1], ref_le[1:]))
    middle = (counts / m) * ((crossing - lo) - (hi - crossing)) + g_u[:-1] + g_u[1:] - 2 * g_x
    return float(tails + np.sum(middle))


def _category_counts(values) -> Counter:
    """Counts by category name; None and NaN count as NONE_CATEGORY, other values as str()."""
    counts: Counter = Counter()
    for key, count in Counter(np.asarray(values, dtype=object).ravel().tolist()).items():
        missing = key is None or (isinstance(key, float) and math.isnan(key))
        counts[NONE_CATEGORY if missing else str(key)] += count
    return counts


def categorical_reference(values) -> CategoricalReference:
    """Prepare a categorical reference from an array of strings (or objects)."""
    counts = _category_counts(values)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("reference values: expected a non-empty array, got none")
    categories = tuple(sorted(counts))
    proportions = np.array([counts[c] for c in categories], dtype=np.float64) / total
    return CategoricalReference(categories, proportions, total)


def categorical_drift(ref: CategoricalReference, current) -> CategoricalDrift:
    """Jensen-Shannon distance, chi-square test and PSI of ``current`` against ``ref``.

    The buckets are the reference's categories, plus one "(new)" bucket (reference share 0) for
    all the categories of the current sample that the reference never saw, if any. Jensen-Shannon is
    ``scipy.spatial.distance.jensenshannon(ref_p, cur_p, base=2)`` on the raw shares (zeros are
    fine there; 0 = same, 1 = disjoint). Chi-square is ``scipy.stats.chisquare(counts,
    expected)`` with expected = the reference shares floored at PROPORTION_FLOOR, renormalized
    to sum to 1, times the current size; its p-value is NaN with a single bucket. PSI floors
    both shares (not renormalized).
    """
    counts = _category_counts(current)
    m = sum(counts.values())
    if m == 0:
        raise ValueError("current values: expected a non-empty array, got none")
    observed = [counts.pop(c, 0) for c in ref.categories]
    ref_p = ref.proportions
    if counts:  # categories the reference never saw
        observed.append(sum(counts.values()))
        ref_p = np.append(ref_p, 0.0)
    observed = np.array(observed, dtype=np.float64)
    cur_p = observed / m
    floored = np.maximum(ref_p, PROPORTION_FLOOR)
    expected = floored / floored.sum() * m
    # Pearson's statistic and its chi-square tail, as scipy.stats.chisquare computes them
    # (called directly: the wrapper costs ten times the sum on a small window).
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    return CategoricalDrift(
        jensen_shannon=float(distance.jensenshannon(ref_p, cur_p, base=2)),
        chi2=chi2,
        chi2_p=float(special.chdtrc(ref_p.size - 1, chi2)) if ref_p.size > 1 else math.nan,
        psi=_psi(ref_p, cur_p),
    )


def chi2_two_sample(ref: CategoricalReference, current) -> tuple[float, float]:
    """Chi-square test of homogeneity of the reference's counts and ``current``'s (one table,
    ``scipy.stats.chi2_contingency`` without continuity correction): unlike the
    goodness-of-fit form of :func:`categorical_drift`, it counts the reference's own sampling
    noise, which matters when the reference is a few hundred events. Categories empty on both
    sides are left out; the p-value is NaN with fewer than two categories."""
    counts = _category_counts(current)
    observed = [counts.pop(c, 0) for c in ref.categories] + [sum(counts.values())]
    reference = [*np.rint(ref.proportions * ref.count), 0.0]
    table = np.array([reference, observed], dtype=np.float64)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 0.0, math.nan
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def rff_map(
    dim: int, n_features: int = 256, bandwidth: float = 1.0, seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """Random Fourier features of the Gaussian kernel exp(-|x - y|^2 / (2 bandwidth^2)).

    Returns ``X (n, dim) -> Z (n, n_features)`` (float32) with ``Z[i] @ Z[j]`` an unbiased
    estimate of the kernel: cos and sin of ``n_features / 2`` frequencies drawn from
    N(0, I / bandwidth^2) (Rahimi and Recht, 2007; the paired form has the lower variance).
    Pick the bandwidth with ``median_bandwidth``.
    """
    if dim < 1 or n_features < 2 or n_features % 2:
        raise ValueError(f"rff_map: dim >= 1 and an even n_features >= 2, got {dim}, {n_features}")
    if not bandwidth > 0:
        raise ValueError(f"rff_map: bandwidth must be positive, got {bandwidth}")
    rng = np.random.default_rng(seed)
    frequencies = (rng.standard_normal((dim, n_features // 2)) / bandwidth).astype(np.float32)
    scale = np.float32(math.sqrt(2.0 / n_features))

    def features(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"rff_map: expected an array (n, {dim}), got shape {x.shape}")
        projected = x @ frequencies
        z = np.empty((x.shape[0], n_features), dtype=np.float32)
        np.cos(projected, out=z[:, : n_features // 2])
        np.sin(projected, out=z[:, n_features // 2 :])
        z *= scale
        return z

    return features


def median_bandwidth(x: np.ndarray, seed: int = 0, sample: int = 1000) -> float:
    """The median heuristic: the median Euclidean distance between rows of ``x`` (at most
    ``sample`` rows, drawn with ``seed``), the usual Gaussian-kernel bandwidth for MMD."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"median_bandwidth: expected 2 or more rows (n, dim), got {x.shape}")
    if x.shape[0] > sample:
        x = x[np.random.default_rng(seed).choice(x.shape[0], sample, replace=False)]
    bandwidth = float(np.median(distance.pdist(x)))
    if not bandwidth > 0:
        raise ValueError("median_bandwidth: the rows are (mostly) identical; no bandwidth")
    return bandwidth


@functools.lru_cache(maxsize=8)
def _labellings(n_r: int, n_c: int, n_permutations: int, seed: int) -> np.ndarray:
    """Row 0 weighs the true labelling: +1/n_r on reference rows, -1/n_c on current ones, so
    ``labellings @ pooled`` gives the difference of the means; the other rows are seeded
    relabellings. They do not depend on the data, so tests of the same sizes (a detector's
    windows) share them and each stays a valid permutation test; drawing them once per size
    is what makes a backtest of a thousand windows affordable."""
    rng = np.random.default_rng([seed, n_r, n_c])
    weights = np.concatenate([np.full(n_r, 1 / n_r), np.full(n_c, -1 / n_c)]).astype(np.float32)
    labellings = np.tile(weights, (n_permutations + 1, 1))
    labellings[1:] = rng.permuted(labellings[1:], axis=1)
    labellings.setflags(write=False)
    return labellings


def mmd(
    reference_z: np.ndarray,
    current_z: np.ndarray,
    n_permutations: int = 200,
    seed: int = 0,
    max_samples: int = 5000,
) -> tuple[float, float]:
    """Squared MMD between two samples of random features, and its permutation p-value.

    MMD^2 = |mean(Zr) - mean(Zc)|^2: the biased (V-statistic) estimate of the Gaussian-kernel
    MMD^2 that ``rff_map`` approximates, linear in the sample sizes. The p-value is
    ``(1 + #{permuted >= observed}) / (1 + n_permutations)`` over random relabellings of the
    pooled rows (drawn once per sizes and seed, see ``_labellings``), all computed in one
    matrix product. Samples above ``max_samples`` rows are subsampled; everything random is
    drawn from ``seed``.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for name, z in (("reference", reference_z), ("current", current_z)):
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[0] == 0:
            raise ValueError(f"mmd: {name} features: expected a non-empty (n, d), got {z.shape}")
        if z.shape[0] > max_samples:
            z = z[rng.choice(z.shape[0], max_samples, replace=False)]
        samples.append(z)
    zr, zc = samples
    if zr.shape[1] != zc.shape[1]:
        raise ValueError(f"mmd: {zr.shape[1]} reference features but {zc.shape[1]} current")
    if n_permutations < 1:
        raise ValueError(f"mmd: n_permutations must be 1 or more, got {n_permutations}")
    labellings = _labellings(zr.shape[0], zc.shape[0], n_permutations, seed)
    gaps = (labellings @ np.concatenate([zr, zc])).astype(np.float64)
    statistics = np.einsum("ij,ij->i", gaps, gaps)
    p = (1 + np.count_nonzero(statistics[1:] >= statistics[0])) / (1 + n_permutations)
    return float(statistics[0]), float(p)


def _pvalues(pvalues) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pvalues, dtype=np.float64)
    tested = ~np.isnan(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN), got {p[tested].tolist()}")
    return p, tested


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate): with the m non-NaN
    p-values in increasing order, max over j <= i of min(1, (m - j + 1) p_(j)). NaN stays NaN
    and does not count in m."""
    p, tested = _pvalues(pvalues)
    adjusted = np.full(p.shape, np.nan)
    q = p[tested]
    order = np.argsort(q, kind="stable")
    steps = np.maximum.accumulate((q.size - np.arange(q.size)) * q[order])
    ranked = np.empty_like(q)
    ranked[order] = np.minimum(steps, 1.0)
    adjusted[tested] = ranked
    return adjusted


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), as
    ``scipy.stats.false_discovery_control(p, method="bh")`` over the non-NaN p-values; NaN
    stays NaN and does not count."""
    p, tested = _pvalues(pvalues)
    adjusted = np.full(p.shape, np.nan)
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(p[tested], method="bh")
    return adjusted
