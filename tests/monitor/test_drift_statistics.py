"""The drift statistics against their references: scipy (ks_2samp, wasserstein_distance,
jensenshannon, chisquare, false_discovery_control), the definitions of PSI and Holm written out
directly, and the exact Gaussian-kernel MMD, on random data and on data shaped like the event
log's (ties, token counts, constant features, unseen categories, missing values)."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from monitor.drift import statistics as st

RNG = np.random.default_rng(27)

# (reference, current) pairs, numeric.
NUMERIC = {
    "normal, shifted": (RNG.normal(0, 1, 3000), RNG.normal(0.2, 1.1, 800)),
    "same distribution": (RNG.normal(5, 2, 2000), RNG.normal(5, 2, 2000)),
    "ties (rounded latency)": (
        np.round(RNG.gamma(2, 0.4, 5000), 1),
        np.round(RNG.gamma(2, 0.5, 900), 1),
    ),
    "token counts": (
        RNG.poisson(40, 4000).astype(float),
        RNG.negative_binomial(8, 0.2, 1000).astype(float),
    ),
    "few distinct values": (
        RNG.integers(0, 3, 1000).astype(float),
        RNG.integers(0, 4, 300).astype(float),
    ),
    "constant reference": (np.full(500, 7.0), RNG.integers(5, 9, 200).astype(float)),
    "constant, both": (np.full(300, 1.0), np.full(50, 1.0)),
    "disjoint": (RNG.uniform(0, 1, 400), RNG.uniform(3, 4, 100)),
    "far from zero": (1.7e9 + RNG.normal(0, 1, 3000), 1.7e9 + RNG.normal(0.1, 1, 1000)),
    "one current value": (RNG.normal(0, 1, 100), np.array([0.3])),
    "current larger": (RNG.exponential(1, 20_000), RNG.exponential(1.05, 60_000)),
}


def psi_by_definition(reference, current, n_bins=10):
    """PSI written out: decile edges of the reference, each bin [lo, hi), floors at 1e-4."""
    inner = sorted(set(np.quantile(reference, [k / n_bins for k in range(1, n_bins)])))
    edges = [-math.inf, *inner, math.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        r = max(np.mean((reference >= lo) & (reference < hi)), 1e-4)
        c = max(np.mean((current >= lo) & (current < hi)), 1e-4)
        total += (c - r) * math.log(c / r)
    return total


@pytest.mark.parametrize("name", NUMERIC)
def test_numeric_drift_equals_scipy(name):
    reference, current = NUMERIC[name]
    drift = st.numeric_drift(st.numeric_reference(reference), current)
    ks = stats.ks_2samp(reference, current, method="asymp")
    assert drift.ks == ks.statistic  # exactly: the same CDF gaps
    size = len(reference) * len(current) / (len(reference) + len(current))
    if size <= st.KS_EXACT_SIZE:
        assert drift.ks_p == pytest.approx(ks.pvalue, rel=1e-12, abs=1e-300)
    else:
        assert drift.ks_p == pytest.approx(stats.kstwobign.sf(np.sqrt(size) * ks.statistic))
        assert drift.ks_p == pytest.approx(ks.pvalue, rel=0.03)
    spread = max(np.std(reference), 1e-3)
    wasserstein = stats.wasserstein_distance(reference, current) / spread
    assert drift.wasserstein == pytest.approx(wasserstein, rel=1e-9, abs=1e-12)
    assert drift.psi == pytest.approx(psi_by_definition(reference, current), rel=1e-12, abs=1e-15)


def test_ks_p_value_equals_scipys_default_past_10000_values():
    """Past 10,000 values scipy's default method is the asymptotic one we use."""
    rng = np.random.default_rng(8)
    reference, current = rng.normal(0, 1, 15_000), rng.normal(0.02, 1, 12_000)
    drift = st.numeric_drift(st.numeric_reference(reference), current)
    assert drift.ks_p == pytest.approx(stats.ks_2samp(reference, current).pvalue, rel=1e-12)


def test_numeric_reference_bins_are_the_reference_deciles():
    reference = np.random.default_rng(1).poisson(3, 2000).astype(float)  # many ties at the deciles
    ref = st.numeric_reference(reference)
    np.testing.assert_array_equal(
        ref.edges[1:-1], np.unique(np.quantile(reference, np.arange(1, 10) / 10))
    )
    assert ref.edges[0] == -np.inf and ref.edges[-1] == np.inf
    counts = [
        np.sum((reference >= lo) & (reference < hi))
        for lo, hi in zip(ref.edges[:-1], ref.edges[1:], strict=True)
    ]
    np.testing.assert_allclose(
        ref.proportions, np.array(counts) / reference.size, rtol=0, atol=1e-15
    )
    assert ref.scale == pytest.approx(np.std(reference))
    np.testing.assert_array_equal(ref.sorted, np.sort(reference))
    assert st.numeric_reference(np.full(10, 2.0)).scale == st.SCALE_FLOOR


def test_numeric_inputs_are_not_changed():
    rng = np.random.default_rng(2)
    reference, current = rng.normal(size=200), rng.normal(size=100)
    before = current.copy()
    st.numeric_drift(st.numeric_reference(reference.copy()), current)
    np.testing.assert_array_equal(current, before)


@pytest.mark.parametrize(
    "reference, current, message",
    [
        ([1.0, math.nan, 2.0], [1.0], "reference values: 1 of 3 are NaN"),
        ([1.0, 2.0], [1.0, math.inf], "current values: 1 of 2 are NaN or infinite"),
        ([1.0, 2.0], [], "current values: expected a non-empty 1-D array"),
        ([], [1.0], "reference values: expected a non-empty 1-D array"),
    ],
)
def test_numeric_bad_input_is_named(reference, current, message):
    with pytest.raises(ValueError, match=message):
        st.numeric_drift(st.numeric_reference(reference), current)


def _objects(*parts):
    return np.array([v for part in parts for v in part], dtype=object)


# (reference, current) pairs, categorical; the current's unseen categories share one bucket.
CATEGORICAL = {
    "finish reasons": (
        RNG.choice(np.array(["stop", "length", "error"], dtype=object), 5000, p=[0.85, 0.12, 0.03]),
        RNG.choice(np.array(["stop", "length", "error"], dtype=object), 700, p=[0.7, 0.2, 0.1]),
    ),
    "feedback with missing": (
        _objects(["up"] * 300, ["down"] * 60, [None] * 2000),
        _objects(["up"] * 20, ["down"] * 40, [None] * 300, [math.nan] * 5),
    ),
    "unseen categories": (
        _objects(["billing"] * 400, ["login"] * 350, ["refund"] * 250),
        _objects(["billing"] * 30, ["weather"] * 15, ["sports"] * 5, ["refund"] * 50),
    ),
    "a category below the floor": (
        _objects(["a"] * 30_000, ["b"] * 9_999, ["rare"]),
        _objects(["a"] * 70, ["b"] * 25, ["rare"] * 5),
    ),
    "a reference category absent now": (
        _objects(["x"] * 100, ["y"] * 100, ["z"] * 100),
        _objects(["x"] * 60, ["y"] * 40),
    ),
    "constant reference, new value": (
        _objects(["stop"] * 100),
        _objects(["stop"] * 8, ["length"] * 2),
    ),
    "integer codes": (RNG.integers(0, 6, 3000), RNG.integers(0, 7, 500)),
}


def _names(values):
    return [
        "(none)" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        for v in values
    ]


@pytest.mark.parametrize("name", CATEGORICAL)
def test_categorical_drift_equals_scipy(name):
    reference, current = CATEGORICAL[name]
    ref_names, cur_names = _names(reference), _names(current)
    categories = sorted(set(ref_names))
    unseen = sorted(set(cur_names) - set(categories))
    ref_p = np.array([ref_names.count(c) for c in categories] + [0] * bool(unseen)) / len(ref_names)
    observed = np.array(
        [cur_names.count(c) for c in categories]
        + ([sum(cur_names.count(c) for c in unseen)] if unseen else [])
    )
    cur_p = observed / len(cur_names)

    drift = st.categorical_drift(st.categorical_reference(reference), current)
    assert drift.jensen_shannon == pytest.approx(
        distance.jensenshannon(ref_p, cur_p, base=2), rel=1e-12
    )
    floored = np.maximum(ref_p, 1e-4)
    chi2 = stats.chisquare(observed, floored / floored.sum() * len(cur_names))
    assert drift.chi2 == pytest.approx(chi2.statistic, rel=1e-12)
    assert drift.chi2_p == pytest.approx(chi2.pvalue, rel=1e-9, abs=1e-300)
    c = np.maximum(cur_p, 1e-4)
    assert drift.psi == pytest.approx(np.sum((c - floored) * np.log(c / floored)), rel=1e-12)


def test_categorical_reference_counts_missing_as_none():
    ref = st.categorical_reference(_objects(["b", "a", None, "a", math.nan]))
    assert ref.categories == ("(none)", "a", "b")
    np.testing.assert_allclose(ref.proportions, [0.4, 0.4, 0.2])
    assert ref.count == 5


def test_same_single_category_has_no_chi_square_p_value():
    ref = st.categorical_reference(["stop"] * 10)
    drift = st.categorical_drift(ref, ["stop"] * 3)
    assert (drift.jensen_shannon, drift.chi2, drift.psi) == (0.0, 0.0, 0.0)
    assert math.isnan(drift.chi2_p)


def test_categorical_bad_input_is_named():
    with pytest.raises(ValueError, match="current values: expected a non-empty"):
        st.categorical_drift(st.categorical_reference(["a"]), [])


def exact_mmd2(x, y, bandwidth):
    """The biased (V-statistic) Gaussian-kernel MMD^2, every pair of points."""

    def kernel(a, b):
        return np.exp(-distance.cdist(a, b, "sqeuclidean") / (2 * bandwidth**2))

    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def test_random_fourier_features_approximate_the_gaussian_kernel():
    x = np.random.default_rng(3).normal(size=(40, 5))
    bandwidth = st.median_bandwidth(x)
    z = st.rff_map(5, n_features=40_000, bandwidth=bandwidth, seed=1)(x)
    assert z.dtype == np.float32 and z.shape == (40, 40_000)
    kernel = np.exp(-distance.cdist(x, x, "sqeuclidean") / (2 * bandwidth**2))
    np.testing.assert_allclose(z.astype(np.float64) @ z.T, kernel, atol=0.03)


def test_rff_mmd2_approximates_the_exact_mmd2():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(60, 4)), rng.normal(0.5, 1.0, size=(50, 4))
    bandwidth = st.median_bandwidth(np.vstack([x, y]))
    rff = st.rff_map(4, n_features=40_000, bandwidth=bandwidth, seed=2)
    mmd2, _ = st.mmd(rff(x), rff(y), n_permutations=50)
    exact = exact_mmd2(x, y, bandwidth)
    assert exact > 0.05  # a real gap, so the relative error means something
    assert mmd2 == pytest.approx(exact, rel=0.05)


def test_median_bandwidth_is_the_median_pairwise_distance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 3))
    assert st.median_bandwidth(x) == pytest.approx(np.median(distance.pdist(x)), rel=1e-12)
    sampled = st.median_bandwidth(rng.normal(size=(5000, 3)), sample=500)
    # |x - y|^2 / 2 is chi-square with 3 degrees of freedom for standard normal x, y in 3-D.
    assert sampled == pytest.approx(np.sqrt(2 * stats.chi2.median(3)), rel=0.05)
    with pytest.raises(ValueError, match="identical"):
        st.median_bandwidth(np.ones((10, 3)))


def test_mmd_p_value_is_uniform_under_the_null():
    """200 seeded draws with no drift: p < 0.05 (and p < 0.5) about as often as chance says."""
    rff = st.rff_map(3, n_features=64, bandwidth=1.5, seed=0)
    rng = np.random.default_rng(0)
    ps = np.array(
        [
            st.mmd(rff(rng.normal(size=(120, 3))), rff(rng.normal(size=(80, 3))), 99, seed=s)[1]
            for s in range(200)
        ]
    )
    for alpha in (0.05, 0.5):
        low, high = stats.binom.ppf([0.0005, 0.9995], 200, alpha)
        assert low <= np.count_nonzero(ps <= alpha) <= high, (alpha, np.sort(ps)[:20])


def test_mmd_finds_a_real_shift():
    rff = st.rff_map(3, n_features=64, bandwidth=1.5, seed=0)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(300, 3)), rng.normal(0.4, 1.0, size=(200, 3))
    mmd2, p = st.mmd(rff(x), rff(y), n_permutations=200)
    assert p == 1 / 201  # no relabelling comes close
    assert mmd2 > 0.01


def test_mmd_is_seeded_and_subsamples():
    rff = st.rff_map(2, n_features=32, bandwidth=1.0, seed=3)
    rng = np.random.default_rng(7)
    x, y = rff(rng.normal(size=(900, 2))), rff(rng.normal(0.1, 1, size=(700, 2)))
    assert st.mmd(x, y, 50, seed=4, max_samples=300) == st.mmd(x, y, 50, seed=4, max_samples=300)
    gap = x.mean(0) - y.mean(0)
    assert st.mmd(x, y, 10)[0] == pytest.approx(float(gap @ gap), rel=1e-4)
    assert st.mmd(x, y, 10, max_samples=300)[0] != st.mmd(x, y, 10)[0]
    with pytest.raises(ValueError, match="32 reference features but 31 current"):
        st.mmd(x, y[:, :31])


def holm_by_definition(p, alpha):
    """Holm's step-down test: reject the smallest p-values while p_(k) <= alpha / (m - k + 1)."""
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(len(p), dtype=bool)
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected[i] = True
    return rejected


PVALUES = {
    "random": RNG.uniform(size=12) ** 3,
    "ties": np.array([0.01, 0.04, 0.01, 0.2, 0.04, 0.5, 1.0, 0.0]),
    "one": np.array([0.03]),
    "many small": np.concatenate([RNG.uniform(0, 1e-3, 30), RNG.uniform(size=70)]),
}


@pytest.mark.parametrize("name", PVALUES)
def test_holm_rejects_as_the_step_down_test(name):
    p = PVALUES[name]
    adjusted = st.holm(p)
    assert np.all((adjusted >= p) & (adjusted <= 1))
    for alpha in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5):
        np.testing.assert_array_equal(adjusted <= alpha, holm_by_definition(p, alpha))


@pytest.mark.parametrize("name", PVALUES)
def test_benjamini_hochberg_equals_scipy(name):
    p = PVALUES[name]
    np.testing.assert_allclose(
        st.benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"), rtol=1e-15
    )


@pytest.mark.parametrize("correct", [st.holm, st.benjamini_hochberg])
def test_nan_p_values_stay_nan_and_do_not_count(correct):
    p = np.array([0.01, math.nan, 0.04, math.nan, 0.03])
    adjusted = correct(p)
    assert np.isnan(adjusted[[1, 3]]).all()
    np.testing.assert_array_equal(adjusted[[0, 2, 4]], correct(p[[0, 2, 4]]))
    assert np.isnan(correct([math.nan])).all()


@pytest.mark.parametrize("correct", [st.holm, st.benjamini_hochberg])
def test_p_values_outside_zero_one_are_refused(correct):
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        correct([0.2, 1.5])


def test_the_two_sample_chi_square_is_scipys_test_of_homogeneity():
    rng = np.random.default_rng(3)
    reference = rng.choice(["a", "b", "c"], 300, p=[0.7, 0.2, 0.1]).astype(object)
    current = rng.choice(["a", "b", "c", "d"], 50, p=[0.5, 0.3, 0.1, 0.1]).astype(object)
    ref = st.categorical_reference(reference)
    counts = [[np.sum(reference == c) for c in "abcd"], [np.sum(current == c) for c in "abcd"]]
    expected = stats.chi2_contingency(np.array(counts), correction=False)
    assert st.chi2_two_sample(ref, current) == pytest.approx(
        (expected.statistic, expected.pvalue), rel=1e-12
    )
    # the reference's own noise: larger p-values than the goodness-of-fit form
    assert st.chi2_two_sample(ref, current)[1] > st.categorical_drift(ref, current).chi2_p
