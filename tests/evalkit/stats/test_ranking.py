import math
import time

import choix
import numpy as np
import pytest
from scipy import optimize, stats

from evalkit.stats.ranking import (
    bradley_terry,
    comparisons_needed,
    fit_bradley_terry,
    win_matrices,
    win_rate,
)
from evalkit.stats.significance import percentile_interval, resample_counts


def _comparisons(n, models=4, seed=0):
    rng = np.random.default_rng(seed)
    strength = np.linspace(-1, 1, models)
    a = rng.integers(0, models, n)
    b = (a + rng.integers(1, models, n)) % models
    p = 1 / (1 + np.exp(strength[b] - strength[a]))
    u = rng.random(n)
    outcome = np.where(u < 0.85 * p, 1.0, np.where(u > 1 - 0.85 * (1 - p), 0.0, 0.5))
    names = [f"model-{k}" for k in range(models)]
    return [names[k] for k in a], [names[k] for k in b], outcome, rng.integers(0, n // 3, n)


def _scipy_mle(first, second, outcome, models):
    """Maximum likelihood with ties as half a win each way, by L-BFGS on the log-likelihood."""
    index = {m: k for k, m in enumerate(models)}
    i = np.array([index[x] for x in first])
    j = np.array([index[x] for x in second])

    def negative_log_likelihood(theta):
        d = theta[i] - theta[j]
        return -np.sum(outcome * -np.logaddexp(0, -d) + (1 - outcome) * -np.logaddexp(0, d))

    theta = optimize.minimize(negative_log_likelihood, np.zeros(len(models)), tol=1e-12).x
    return theta - theta.mean()


def test_fit_equals_choix_mm_pairwise_with_ties_as_half_wins():
    first, second, outcome, _ = _comparisons(600)
    models = sorted(set(first))
    index = {m: k for k, m in enumerate(models)}
    # choix counts whole wins: double every judgement, a tie becomes one win each way.
    data = []
    for a, b, o in zip(first, second, outcome):
        data += {1.0: [(a, b)] * 2, 0.0: [(b, a)] * 2, 0.5: [(a, b), (b, a)]}[o]
    data = [(index[w], index[loser]) for w, loser in data]
    for prior in (0.0, 0.5):
        expected = choix.mm_pairwise(len(models), data, alpha=prior, tol=1e-12, max_iter=100_000)
        wins, _ = win_matrices(first, second, outcome, np.arange(len(first)))
        ours = fit_bradley_terry(2 * wins.sum(axis=0).reshape(1, 4, 4), prior)[0]
        np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_fit_equals_a_scipy_maximum_likelihood_fit():
    first, second, outcome, groups = _comparisons(2000, models=5, seed=3)
    ranking = bradley_terry(first, second, outcome, groups, prior=0.0, n_resamples=50)
    models = sorted(set(first))
    expected = dict(zip(models, _scipy_mle(first, second, outcome, models)))
    for s in ranking.strengths:
        assert s.theta == pytest.approx(expected[s.model], abs=1e-5)
    assert [s.model for s in ranking.strengths] == sorted(models, key=lambda m: -expected[m])
    assert ranking.win_probability("model-4", "model-0") > 0.5


def test_intervals_come_from_refitting_prompt_resamples():
    first, second, outcome, groups = _comparisons(300, seed=1)
    ranking = bradley_terry(first, second, outcome, groups, n_resamples=40, seed=7)
    prompts = np.unique(groups)
    (counts,) = resample_counts(len(prompts), 40, 7)
    refits = []
    for c in counts:  # rebuild each resample from the raw judgements of the drawn prompts
        pick = np.concatenate(
            [np.flatnonzero(groups == p).repeat(int(k)) for p, k in zip(prompts, c)]
        )
        wins, _ = win_matrices(
            [first[k] for k in pick], [second[k] for k in pick], outcome[pick], pick
        )
        refits.append(fit_bradley_terry(wins.sum(axis=0).reshape(1, 4, 4), 0.1)[0])
    refits = np.array(refits)
    for s in ranking.strengths:
        k = int(s.model.split("-")[1])
        assert (s.low, s.high) == pytest.approx(percentile_interval(refits[:, k]))
        assert s.low <= s.theta <= s.high


def test_a_model_that_never_wins_stays_finite_with_the_prior():
    ranking = bradley_terry(["a", "a", "b"], ["b", "c", "c"], [1.0, 1.0, 1.0], n_resamples=20)
    assert all(math.isfinite(s.theta) for s in ranking.strengths)
    assert [s.model for s in ranking.strengths] == ["a", "b", "c"]


def test_bradley_terry_is_fast_enough_for_the_benchmark_size():
    first, second, outcome, groups = _comparisons(50_000, models=10, seed=2)
    started = time.perf_counter()
    bradley_terry(first, second, outcome, groups, n_resamples=200)
    assert time.perf_counter() - started < 10  # the benchmark does 1,000 in about 2 s


def test_win_rate_counts_ties_half_and_resamples_prompts():
    outcome = np.array([1, 1, 0.5, 0, 1, 0.5, 1, 0])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    rate = win_rate(outcome, groups, n_resamples=500, seed=0)
    assert rate.value == pytest.approx(0.625)
    assert (rate.wins, rate.ties, rate.losses, rate.n) == (4, 2, 2, 8)
    assert rate.low < rate.value < rate.high


def test_comparisons_needed_follows_the_normal_approximation():
    rng = np.random.default_rng(0)
    outcome = rng.choice([0.0, 0.5, 1.0], size=200, p=[0.35, 0.1, 0.55])
    plan = comparisons_needed(outcome, 0.5, alpha=0.05, power=0.8)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    expected = (z * outcome.std(ddof=1) / (outcome.mean() - 0.5)) ** 2
    assert plan.needed == math.ceil(expected)
    assert plan.more == max(0, math.ceil(expected) - 200)
    assert comparisons_needed(np.array([1.0, 0.0] * 10)).needed == math.inf
