"""Pairwise judgements to numbers: Bradley-Terry strengths, win rates, and how many more to collect.

Pure functions over arrays. An outcome is 1 when the first model won, 0 when the second did and
0.5 for a tie (a "both bad" judgement counts as a tie: neither answer was preferred). Intervals
are percentile bootstrap intervals that resample prompts, so the judgements of one prompt move
together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evalkit.stats import ALPHA, N_RESAMPLES, SEED
from evalkit.stats.significance import (
    bootstrap_ci,
    min_detectable_difference,
    percentile_interval,
    resample_counts,
)

MAX_ITER = 10_000
TOL = 1e-8  # L1 change of the centred log-strengths between iterations, as choix measures it


@dataclass(frozen=True)
class Strength:
    """A model's Bradley-Terry log-strength (centred: the models' mean is 0) and interval."""

    model: str
    theta: float
    low: float
    high: float
    wins: float  # ties count half
    comparisons: int


@dataclass(frozen=True)
class Ranking:
    strengths: tuple[Strength, ...]  # strongest first
    comparisons: int
    prompts: int
    n_resamples: int
    seed: int
    prior: float

    def win_probability(self, a: str, b: str) -> float:
        """P(a beats b) under the fitted model."""
        theta = {s.model: s.theta for s in self.strengths}
        return 1.0 / (1.0 + math.exp(theta[b] - theta[a]))


def win_matrices(
    first: Sequence[str], second: Sequence[str], outcome: Sequence[float], groups: Sequence
) -> tuple[np.ndarray, list[str]]:
    """Per-prompt win counts ``(prompts, m * m)``: entry ``i * m + j`` is i's wins over j."""
    models = sorted(set(first) | set(second))
    index = {name: k for k, name in enumerate(models)}
    i = np.array([index[x] for x in first])
    j = np.array([index[x] for x in second])
    if np.any(i == j):
        raise ValueError("a model cannot be compared with itself")
    outcome = np.asarray(outcome, dtype=float)
    _, prompt = np.unique(np.asarray(groups), return_inverse=True)
    m, p = len(models), int(prompt.max()) + 1
    cells = np.concatenate([prompt * m * m + i * m + j, prompt * m * m + j * m + i])
    wins = np.bincount(cells, weights=np.concatenate([outcome, 1 - outcome]), minlength=p * m * m)
    return wins.reshape(p, m * m), models


def fit_bradley_terry(wins: np.ndarray, prior: float = 0.1) -> np.ndarray:
    """Centred log-strengths for each win matrix in ``wins`` (batch x m x m), by MM.

    Zermelo's / Hunter's minorization-maximization step, the one choix's ``mm_pairwise`` takes:
    p_i <- (W_i + prior) / (sum_j N_ij / (p_i + p_j) + prior), where W_i are i's wins and N_ij
    the comparisons of i and j. ``prior`` (choix's ``alpha``) keeps strengths finite when a
    model never wins; 0 gives the maximum-likelihood fit.
    """
    wins = np.asarray(wins, dtype=float)
    games = wins + np.swapaxes(wins, 1, 2)
    won = wins.sum(axis=2)
    theta = np.zeros(won.shape)
    active = np.ones(len(wins), dtype=bool)
    for _ in range(MAX_ITER):
        p = np.exp(theta[active])
        p *= p.shape[1] / p.sum(axis=1, keepdims=True)  # mean strength 1, as choix scales it
        denom = (games[active] / (p[:, :, None] + p[:, None, :])).sum(axis=2)
        # Without a prior, a model that never wins goes to -inf (no fit): NaN, found by callers.
        with np.errstate(divide="ignore", invalid="ignore"):
            new = np.log((won[active] + prior) / (denom + prior))
            new -= new.mean(axis=1, keepdims=True)
        change = np.abs(new - theta[active]).sum(axis=1)
        theta[active] = new
        still = change >= TOL
        if not still.any():
            return theta
        active[np.flatnonzero(active)[~still]] = False
    raise RuntimeError(f"Bradley-Terry fit did not converge in {MAX_ITER} iterations")


def bradley_terry(
    first: Sequence[str],
    second: Sequence[str],
    outcome: Sequence[float],
    groups: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    prior: float = 0.1,
    confidence: float = 0.95,
) -> Ranking:
    """Bradley-Terry strengths of the models compared, with intervals resampled by prompt.

    ``groups`` names each comparison's prompt (default: every comparison its own). The
    comparisons are summed into one small win matrix per prompt; a resample's matrix is then a
    row of ``counts @ per_prompt`` and is refitted with :func:`fit_bradley_terry`.
    """
    if len(first) == 0:
        raise ValueError("no comparisons to rank")
    groups = np.arange(len(first)) if groups is None else groups
    per_prompt, models = win_matrices(first, second, outcome, groups)
    m = len(models)
    total = per_prompt.sum(axis=0)
    theta = fit_bradley_terry(total.reshape(1, m, m), prior)[0]
    if not np.isfinite(theta).all():
        raise ValueError(
            "the maximum-likelihood fit does not exist: a model won all or none of its "
            "comparisons (give a prior above 0)"
        )
    resampled = np.vstack(
        [
            fit_bradley_terry((c @ per_prompt).reshape(-1, m, m), prior)
            for c in resample_counts(len(per_prompt), n_resamples, seed)
        ]
    )
    matrix = total.reshape(m, m)
    games = (matrix + matrix.T).sum(axis=1)
    strengths = [
        Strength(
            name,
            float(theta[k]),
            *percentile_interval(resampled[:, k], confidence),
            float(matrix[k].sum()),
            round(games[k]),
        )
        for k, name in enumerate(models)
    ]
    strengths.sort(key=lambda s: (-s.theta, s.model))
    return Ranking(tuple(strengths), len(first), len(per_prompt), n_resamples, seed, prior)


@dataclass(frozen=True)
class WinRate:
    """How often the candidate was preferred (ties half), with a bootstrap interval."""

    value: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def win_rate(
    outcome: Sequence[float],
    groups: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> WinRate:
    """The candidate's win rate from its outcomes (1 win, 0.5 tie, 0 loss), resampling prompts."""
    outcome = np.asarray(outcome, dtype=float)
    if len(outcome) == 0:
        raise ValueError("no judgements")
    low, high = bootstrap_ci(
        outcome,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        groups=None if groups is None else np.asarray(groups),
    )
    return WinRate(
        float(outcome.mean()),
        low,
        high,
        int(np.sum(outcome == 1)),
        int(np.sum(outcome == 0.5)),
        int(np.sum(outcome == 0)),
    )


@dataclass(frozen=True)
class Plan:
    """How many judgements a win-rate gate needs before it can be decided."""

    have: int
    needed: float  # total judgements for the power asked; inf when the win rate is at the bar
    threshold: float
    alpha: float
    power: float

    @property
    def more(self) -> float:
        return max(0.0, self.needed - self.have)


def comparisons_needed(
    outcome: Sequence[float], threshold: float = 0.5, *, alpha: float = ALPHA, power: float = 0.8
) -> Plan:
    """Judgements needed to tell the observed win rate from ``threshold`` with ``power``.

    Normal approximation for a two-sided test at level ``alpha``:
    n = ((z_{1-alpha/2} + z_{power}) * sd / (p - threshold))^2, where p is the observed win
    rate and sd the standard deviation of the per-judgement outcomes; the observed difference
    is taken as the true one. Equivalently n = have * (MDD / |p - threshold|)^2, MDD being
    :func:`evalkit.stats.significance.min_detectable_difference` at the current size.
    Judgements of one prompt are treated as independent, so with heavy overlap it is a floor.
    """
    outcome = np.asarray(outcome, dtype=float)
    gap = abs(float(outcome.mean()) - threshold) if len(outcome) else 0.0
    mdd = min_detectable_difference(outcome, alpha=alpha, power=power)
    if gap == 0 or not math.isfinite(mdd):
        needed = math.inf
    else:
        needed = float(math.ceil(len(outcome) * (mdd / gap) ** 2))
    return Plan(len(outcome), needed, threshold, alpha, power)
