import math

import numpy as np
import pytest
from scipy import stats

from evalkit.stats import N_RESAMPLES
from evalkit.stats.significance import (
    bootstrap_ci,
    bootstrap_sums,
    mcnemar_p_value,
    min_detectable_difference,
    paired_bootstrap,
    permutation_p_value,
    resample_counts,
    wilson_interval,
)


def test_resample_counts_are_the_draws_of_default_rng():
    n, k = 7, 5
    counts = np.vstack(list(resample_counts(n, k, seed=3)))
    draws = np.random.default_rng(3).integers(0, n, size=(k, n))
    expected = np.stack([np.bincount(row, minlength=n) for row in draws])
    assert np.array_equal(counts, expected)
    assert np.all(counts.sum(axis=1) == n)


def test_chunking_does_not_change_the_resamples(monkeypatch):
    values = np.random.default_rng(0).normal(size=(50, 2))
    whole = bootstrap_sums(values, n_resamples=40, seed=1)
    monkeypatch.setattr("evalkit.stats.significance.CHUNK", 120)  # two resamples per chunk
    assert np.allclose(bootstrap_sums(values, n_resamples=40, seed=1), whole)


def test_bootstrap_ci_equals_the_direct_percentile_bootstrap():
    values = np.random.default_rng(0).exponential(size=200)
    draws = np.random.default_rng(5).integers(0, 200, size=(2000, 200))
    direct = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    assert np.allclose(bootstrap_ci(values, n_resamples=2000, seed=5), direct)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)


def test_cluster_bootstrap_is_wider_for_correlated_groups():
    rng = np.random.default_rng(0)
    group_effect = np.repeat(rng.normal(size=40), 10)
    values = group_effect + rng.normal(size=400) * 0.1
    groups = np.repeat(np.arange(40), 10)
    plain = bootstrap_ci(values, seed=0)
    clustered = bootstrap_ci(values, seed=0, groups=groups)
    assert clustered[1] - clustered[0] > 2 * (plain[1] - plain[0])


def test_paired_bootstrap_of_a_ratio_statistic():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 50, size=300).astype(float)
    nll_b = tokens * 3.0 + rng.normal(size=300)
    nll_c = nll_b + tokens * 0.1

    def ppl(sums):
        return np.exp(sums[:, 0] / sums[:, 1])

    observed, low, high, dist = paired_bootstrap(
        np.column_stack([nll_b, tokens]), np.column_stack([nll_c, tokens]), ppl, seed=0
    )
    expected = math.exp(nll_c.sum() / tokens.sum()) - math.exp(nll_b.sum() / tokens.sum())
    assert observed == pytest.approx(expected)
    assert 0 < low < observed < high
    assert len(dist) == N_RESAMPLES


def test_permutation_matches_scipy():
    rng = np.random.default_rng(2)
    diffs = rng.normal(0.08, 1, size=300)
    ours = permutation_p_value(diffs, n_resamples=20000, seed=0)
    reference = stats.permutation_test(
        (diffs,),
        lambda d, axis=-1: np.mean(d, axis=axis),
        permutation_type="samples",
        n_resamples=20000,
        vectorized=True,
        random_state=1,
    ).pvalue
    assert ours == pytest.approx(reference, abs=0.015)
    assert permutation_p_value(np.zeros(10)) == 1.0


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    baseline = np.array([1] * 30 + [0] * 20 + [1] * 3 + [0] * 12, bool)
    candidate = np.array([1] * 30 + [0] * 20 + [0] * 3 + [1] * 12, bool)
    assert mcnemar_p_value(baseline, candidate) == pytest.approx(
        stats.binomtest(12, 15, 0.5).pvalue
    )
    # 3 vs 12 discordant pairs: a textbook exact McNemar p of 0.0352
    assert mcnemar_p_value(baseline, candidate) == pytest.approx(0.0352, abs=1e-4)
    assert mcnemar_p_value(baseline, baseline) == 1.0


def test_wilson_interval_textbook_value():
    # Wilson (1927) / Newcombe (1998) example: 81 of 263 -> [0.2553, 0.3662]
    low, high = wilson_interval(81, 263)
    assert (low, high) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_min_detectable_difference_has_the_stated_power():
    rng = np.random.default_rng(3)
    sd, n = 1.0, 200
    mdd = min_detectable_difference(rng.normal(0, sd, size=n))
    rejections = [
        stats.ttest_1samp(rng.normal(mdd, sd, size=n), 0).pvalue < 0.05 for _ in range(400)
    ]
    assert np.mean(rejections) == pytest.approx(0.8, abs=0.07)
