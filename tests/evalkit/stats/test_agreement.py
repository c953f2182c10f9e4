import krippendorff
import numpy as np
import pytest

from evalkit.stats.agreement import (
    annotator_stats,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    reliability_matrix,
)
from evalkit.stats.significance import percentile_interval, resample_counts, wilson_interval

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the worked example:
# 4 coders, 12 units, values 1-5, missing as NaN.
KRIPPENDORFF_2011 = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
        [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
    ]
)

# Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories; kappa = 0.210.
FLEISS_1971 = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_equals_the_krippendorff_package(level):
    result = krippendorff_alpha(KRIPPENDORFF_2011, level, n_resamples=300, seed=1)
    expected = krippendorff.alpha(reliability_data=KRIPPENDORFF_2011, level_of_measurement=level)
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert result.low <= result.value <= result.high
    assert (result.items, result.ratings) == (11, 40)  # the unit rated once is not pairable


def test_published_alpha_values():
    # Krippendorff (2011): nominal 0.743, interval 0.849.
    assert krippendorff_alpha(KRIPPENDORFF_2011, "nominal").value == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(KRIPPENDORFF_2011, "interval").value == pytest.approx(0.849, abs=5e-4)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_interval_is_the_package_alpha_over_resampled_items(level):
    """The vectorized bootstrap equals calling the package on every resample of the items."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 6, size=(3, 25)).astype(float)
    data[rng.random(data.shape) < 0.2] = np.nan
    columns = data[:, (~np.isnan(data)).sum(axis=0) >= 2]
    result = krippendorff_alpha(data, level, n_resamples=200, seed=2)
    (counts,) = resample_counts(columns.shape[1], 200, 2)
    direct = [
        krippendorff.alpha(
            reliability_data=np.repeat(columns, c.astype(int), axis=1), level_of_measurement=level
        )
        for c in counts
    ]
    assert (result.low, result.high) == pytest.approx(percentile_interval(np.array(direct)))


def test_alpha_interval_is_seeded_and_narrows_with_more_items():
    rng = np.random.default_rng(5)
    truth = rng.integers(1, 6, size=400)
    noisy = np.stack([truth, truth, truth]) + rng.integers(-1, 2, size=(3, 400))
    small = krippendorff_alpha(noisy[:, :40], "interval", seed=3)
    assert small == krippendorff_alpha(noisy[:, :40], "interval", seed=3)
    large = krippendorff_alpha(noisy, "interval", seed=3)
    assert large.high - large.low < small.high - small.low


def test_cohen_kappa_textbook_example():
    # Wikipedia's worked example: 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    result = cohen_kappa(first, second, n_resamples=500, seed=0)
    assert result.value == pytest.approx(0.4)
    assert result.low < 0.4 < result.high and result.items == 50


def test_cohen_kappa_bootstrap_matches_refitting_resampled_items():
    first, second = (
        np.array([0, 1, 1, 2, 0, 1, 2, 2, 0, 1]),
        np.array([0, 1, 2, 2, 0, 0, 2, 1, 0, 1]),
    )
    result = cohen_kappa(first, second, n_resamples=2000, seed=4)
    rng = np.random.default_rng(4)
    draws = rng.integers(0, 10, size=(2000, 10))
    direct = []
    for d in draws:
        a, b = first[d], second[d]
        labels = np.union1d(a, b)
        pa = np.array([(a == k).mean() for k in labels])
        pb = np.array([(b == k).mean() for k in labels])
        pe = (pa * pb).sum()
        direct.append(((a == b).mean() - pe) / (1 - pe) if pe < 1 else np.nan)
    direct = np.array(direct)
    low, high = np.percentile(direct[np.isfinite(direct)], [2.5, 97.5])
    assert (result.low, result.high) == pytest.approx((low, high))


def test_fleiss_kappa_textbook_example():
    result = fleiss_kappa(FLEISS_1971, n_resamples=500, seed=0)
    assert result.value == pytest.approx(0.20993, abs=1e-5)
    assert result.low < result.value < result.high and result.ratings == 140


def test_fleiss_kappa_needs_the_same_number_of_ratings_per_item():
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [2, 1]])


def test_reliability_matrix_places_each_rating():
    data, raters, items = reliability_matrix([("b", "x", 2), ("a", "y", 3), ("a", "x", 1)])
    assert raters == ["a", "b"] and items == ["x", "y"]
    np.testing.assert_array_equal(data, [[1, 3], [2, np.nan]])


def test_annotator_stats():
    stats = annotator_stats("ann", [1000, 3000, 2000], [0.0, 1800.0, 3600.0], [True, False, True])
    assert stats.gold_accuracy == pytest.approx(2 / 3)
    assert (stats.gold_low, stats.gold_high) == wilson_interval(2, 3)
    assert stats.median_shown_s == 2.0 and stats.per_hour == pytest.approx(2.0)
