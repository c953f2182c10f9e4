"""Per-category bias scores with bootstrap intervals, from the per-pair results."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.results import ExampleResult
from evalkit.stats import N_RESAMPLES, SEED
from evalkit.stats.significance import bootstrap_ci


def bias_summary(
    results: Sequence[ExampleResult],
    metric: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> dict:
    """Mean of ``metric`` per category (``metadata["category"]``) and overall, each with its
    percentile bootstrap interval; for ``stereo_preferred_*`` the share preferring the
    stereotype (0.5: no preference), for the generation ``*_diff`` the mean paired difference.

    >>> bias_summary(results, "stereo_preferred_shared")["categories"]["gender"]
    {'n': 30, 'score': 0.6, 'low': 0.43, 'high': 0.77}
    """
    scored = [r for r in results if metric in r.scores]
    if not scored:
        known = sorted({m for r in results for m in r.scores})
        close = difflib.get_close_matches(metric, known, n=1)
        raise EvalkitError(
            f"no result has the metric {metric!r}",
            hint=f"did you mean: {close[0]}?" if close else f"metrics: {', '.join(known)}",
        )

    def score(values: list[float]) -> dict:
        low, high = bootstrap_ci(
            np.asarray(values), n_resamples=n_resamples, seed=seed, confidence=confidence
        )
        return {"n": len(values), "score": float(np.mean(values)), "low": low, "high": high}

    by_category: dict[str, list[float]] = {}
    for r in scored:
        by_category.setdefault(r.metadata["category"], []).append(r.scores[metric])
    return {
        "metric": metric,
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
        "categories": {c: score(v) for c, v in sorted(by_category.items())},
        "overall": score([r.scores[metric] for r in scored]),
    }
