"""Reports over the ratings in the store: annotators, agreement, rankings and win rates.

Each function reads the ratings once (:func:`evalkit.rating.queue.load_ratings`) and hands arrays to
the pure statistics in :mod:`evalkit.stats.agreement` and :mod:`evalkit.stats.ranking`.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import duckdb
import numpy as np

from evalkit.errors import EvalkitError
from evalkit.rating.queue import LIVE_LEASES, ensure_schema, utc_now
from evalkit.rating.rubric import CHOICES, ITEM_KINDS, THUMBS, Rubric, check_choice
from evalkit.stats import N_RESAMPLES, SEED
from evalkit.stats.agreement import (
    Agreement,
    AnnotatorStats,
    annotator_stats,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    reliability_matrix,
)
from evalkit.stats.ranking import (
    Plan,
    Ranking,
    WinRate,
    bradley_terry,
    comparisons_needed,
    win_rate,
)

GOLD_LIKERT_TOLERANCE = 1  # a score within one point of the gold score counts as right
OUTCOME = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}  # for the model shown as A


def load_ratings(con: duckdb.DuckDBPyConnection, *, include_skips: bool = False) -> list[dict]:
    """Every rating joined with its item, in a stable order (item, then rating id)."""
    ensure_schema(con)
    rows = con.execute(
        "SELECT r.rating_id, r.item_id, r.annotator, r.scores, r.thumbs, r.choice, r.original, "
        "r.corrected, r.skip_reason, r.shown_ms, r.guideline_version, r.app_version, "
        "r.submitted_at, i.kind, i.prompt, i.response_a, i.response_b, i.source_a, i.source_b, "
        "i.source, i.group_id, i.slice, i.gold "
        "FROM ratings r JOIN rating_items i USING (item_id) "
        f"{'' if include_skips else 'WHERE r.skip_reason IS NULL '}"
        "ORDER BY r.item_id, r.rating_id"
    )
    names = [d[0] for d in rows.description]
    records = [dict(zip(names, row)) for row in rows.fetchall()]
    for r in records:
        for key in ("scores", "prompt", "source", "gold"):
            r[key] = json.loads(r[key]) if r[key] is not None else None
    return records


def ratings_version(con: duckdb.DuckDBPyConnection) -> tuple[int, str | None]:
    """Changes whenever a rating is stored (ratings are only ever added): the key of a cached
    report, so it is recomputed on new ratings only."""
    ensure_schema(con)
    count, last = con.execute("SELECT count(*), max(submitted_at) FROM ratings").fetchone()
    return count, last and last.isoformat()


def queue_status(con: duckdb.DuckDBPyConnection) -> dict:
    """Counts of the queue: items by kind and state, live leases, ratings, skips, refusals."""
    ensure_schema(con)
    now = utc_now()
    items = con.execute(
        "WITH counted AS (SELECT item_id, count(*) AS done FROM ratings "
        "WHERE skip_reason IS NULL GROUP BY item_id) "
        "SELECT kind, count(*), count(*) FILTER (WHERE gold IS NOT NULL), "
        "count(*) FILTER (WHERE done IS NULL), "
        "count(*) FILTER (WHERE done < overlap), "
        "count(*) FILTER (WHERE done >= overlap) "
        "FROM rating_items LEFT JOIN counted USING (item_id) GROUP BY kind ORDER BY kind"
    ).fetchall()
    keys = ("items", "gold", "unrated", "started", "complete")
    return {
        "items": {kind: dict(zip(keys, counts)) for kind, *counts in items},
        "annotators": con.execute("SELECT count(*) FROM rating_annotators").fetchone()[0],
        "live_leases": con.execute(LIVE_LEASES, {"now": now}).fetchone()[0],
        "ratings": con.execute("SELECT count(*) FROM ratings WHERE skip_reason IS NULL").fetchone()[
            0
        ],
        "skips": con.execute(
            "SELECT count(*) FROM ratings WHERE skip_reason IS NOT NULL"
        ).fetchone()[0],
        "refused": con.execute("SELECT count(*) FROM rating_refused").fetchone()[0],
    }


def list_items(
    con: duckdb.DuckDBPyConnection, *, batch: str | None = None, kind: str | None = None
) -> list[dict]:
    """The queued items, oldest first: id, kind, counted ratings of the overlap wanted, whether
    gold, batch, slice and source (of one ``batch`` or ``kind``: all)."""
    ensure_schema(con)
    if kind is not None:
        check_choice(kind, ITEM_KINDS, "item kind")
    rows = con.execute(
        "WITH counted AS (SELECT item_id, count(*) AS ratings FROM ratings "
        "WHERE skip_reason IS NULL GROUP BY item_id) "
        "SELECT item_id, kind, coalesce(ratings, 0) AS ratings, overlap, gold IS NOT NULL AS gold,"
        " batch, slice, priority, source FROM rating_items LEFT JOIN counted USING (item_id) "
        "WHERE ($batch IS NULL OR batch = $batch) AND ($kind IS NULL OR kind = $kind) "
        "ORDER BY created_at, item_id",
        {"batch": batch, "kind": kind},
    )
    names = [d[0] for d in rows.description]
    return [dict(zip(names, row)) | {"source": json.loads(row[-1])} for row in rows.fetchall()]


def format_items(items: list[dict]) -> str:
    lines = [f"{'item':<18}{'kind':<12}{'rated':>7}  {'gold':<6}{'batch':<14}{'slice':<14}source"]
    for i in items:
        source = json.dumps(i["source"], sort_keys=True)
        lines.append(
            f"{i['item_id']:<18}{i['kind']:<12}{i['ratings']:>3} of {i['overlap']:<2}"
            f"{'yes' if i['gold'] else '':<6}{i['batch'] or '-':<14}{i['slice'] or '-':<14}{source}"
        )
    return "\n".join(lines)


def gold_correct(gold: dict, rating: dict) -> bool:
    """Whether a rating matches an item's gold answer on every field the gold answer has."""
    checks = []
    if "choice" in gold:
        checks.append(rating["choice"] == gold["choice"])
    if "thumbs" in gold:
        checks.append(rating["thumbs"] == gold["thumbs"])
    for name, value in gold.get("scores", {}).items():
        given = (rating["scores"] or {}).get(name)
        checks.append(given is not None and abs(given - value) <= GOLD_LIKERT_TOLERANCE)
    return bool(checks) and all(checks)


def annotator_report(con: duckdb.DuckDBPyConnection) -> list[AnnotatorStats]:
    """Per annotator: ratings, skips, gold accuracy with a Wilson interval, pace."""
    by_annotator: dict[str, list[dict]] = defaultdict(list)
    for r in load_ratings(con, include_skips=True):
        by_annotator[r["annotator"]].append(r)
    report = []
    for name, records in sorted(by_annotator.items()):
        counted = [r for r in records if r["skip_reason"] is None]
        report.append(
            annotator_stats(
                name,
                [r["shown_ms"] for r in counted],
                [r["submitted_at"].timestamp() for r in counted],
                [gold_correct(r["gold"], r) for r in counted if r["gold"]],
                skips=len(records) - len(counted),
            )
        )
    return report


def _codes(values: tuple[str, ...]) -> dict[str, int]:
    return {v: k for k, v in enumerate(values)}


def agreement_report(
    con: duckdb.DuckDBPyConnection,
    rubric: Rubric,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> list[tuple[str, Agreement | str]]:
    """Agreement per rubric dimension (Krippendorff ordinal and interval), on pairwise choices
    and thumbs (nominal alpha, Cohen's or Fleiss' kappa). A measure that the data cannot
    support is listed with the reason instead."""
    records = load_ratings(con)
    fields: list[tuple[str, list[tuple[str, str, float]], tuple[str, ...]]] = [
        (
            f"likert:{name}",
            [(r["annotator"], r["item_id"], r["scores"][name]) for r in records if r["scores"]],
            (),
        )
        for name in rubric.dimension_names
    ]
    for field, values in (("choice", CHOICES), ("thumbs", THUMBS)):
        code = _codes(values)
        triples = [(r["annotator"], r["item_id"], code[r[field]]) for r in records if r[field]]
        fields.append((field, triples, values))
    report: list[tuple[str, Agreement | str]] = []
    options = {"n_resamples": n_resamples, "seed": seed}
    for label, triples, categories in fields:
        if not triples:
            continue
        data, raters, _ = reliability_matrix(triples)
        for level in ("nominal",) if categories else ("ordinal", "interval"):
            _measure(report, label, krippendorff_alpha, data, level, **options)
        if categories and len(raters) == 2:
            both = ~np.isnan(data).any(axis=0)
            _measure(report, label, cohen_kappa, data[0, both], data[1, both], **options)
        elif categories:
            counts = _fleiss_counts(data, len(categories))
            _measure(report, label, fleiss_kappa, counts, **options)
    return report


def _measure(report: list, label: str, statistic, *args, **options) -> None:
    try:
        report.append((label, statistic(*args, **options)))
    except ValueError as exc:
        report.append((label, f"not computed: {exc}"))


def _fleiss_counts(data: np.ndarray, n_categories: int) -> np.ndarray:
    """Items x categories counts, over the items with the most common number (>= 2) of ratings."""
    rated = (~np.isnan(data)).sum(axis=0)
    common = Counter(int(m) for m in rated if m >= 2).most_common(1)
    keep = rated == (common[0][0] if common else 0)
    return np.stack([(data[:, keep] == c).sum(axis=0) for c in range(n_categories)], axis=1)


@dataclass(frozen=True)
class HeadToHead:
    """A candidate against its baseline on the pairs queued from their two runs."""

    baseline: str
    candidate: str
    win_rate: WinRate
    plan: Plan


def ranking_report(
    con: duckdb.DuckDBPyConnection,
    *,
    threshold: float = 0.5,
    power: float = 0.8,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    prior: float = 0.1,
) -> tuple[Ranking, list[HeadToHead]]:
    """Bradley-Terry over every pairwise judgement, and each candidate's win rate over its
    baseline with the judgements still needed to tell it from ``threshold``.

    Models are shown by their run names (see :func:`model_labels`). ``prior`` is the
    Bradley-Terry prior, in wins (choix's ``alpha``): 0 gives the maximum-likelihood fit.
    """
    if not (prior >= 0 and math.isfinite(prior)):
        raise EvalkitError(f"prior {prior}: must be 0 or more", hint="0.1 keeps strengths finite")
    pairs = [r for r in load_ratings(con) if r["choice"]]
    if not pairs:
        raise EvalkitError(
            "no pairwise judgements in the store yet",
            hint="queue a comparison (`evalkit rate enqueue compare`) and rate some pairs",
        )
    label = model_labels(con, {r[k] for r in pairs for k in ("source_a", "source_b")})
    try:
        ranking = bradley_terry(
            [label[r["source_a"]] for r in pairs],
            [label[r["source_b"]] for r in pairs],
            [OUTCOME[r["choice"]] for r in pairs],
            [r["group_id"] for r in pairs],
            n_resamples=n_resamples,
            seed=seed,
            prior=prior,
        )
    except ValueError as exc:
        raise EvalkitError(f"Bradley-Terry with prior {prior}: {exc}") from None
    by_comparison: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in pairs:
        if "baseline" in r["source"]:
            by_comparison[r["source"]["baseline"], r["source"]["candidate"]].append(r)
    comparisons = []
    for (baseline, candidate), rows in sorted(by_comparison.items()):
        outcome = [
            OUTCOME[r["choice"]] if r["source_a"] == candidate else 1 - OUTCOME[r["choice"]]
            for r in rows
        ]
        rate = win_rate(outcome, [r["group_id"] for r in rows], n_resamples=n_resamples, seed=seed)
        plan = comparisons_needed(outcome, threshold, power=power)
        comparisons.append(HeadToHead(label[baseline], label[candidate], rate, plan))
    return ranking, comparisons


def model_labels(con: duckdb.DuckDBPyConnection, sources: set[str]) -> dict[str, str]:
    """How to show each response's source: an evaluation run by its name (with its id where
    several runs share the name, or none is given), anything else (a served model version) as
    it is."""
    from evalkit.results import ensure_schema as ensure_runs

    ensure_runs(con)
    names = dict(
        con.execute(
            "SELECT run_id, name FROM eval_runs WHERE list_contains(?, run_id)", [sorted(sources)]
        ).fetchall()
    )
    shared = Counter(names.values())
    labels = {}
    for source in sources:
        name = names.get(source, source)
        unique = source not in names or (name and shared[name] == 1)
        labels[source] = name if unique else f"{name or 'run'} ({source})"
    return labels


def format_status(con: duckdb.DuckDBPyConnection) -> str:
    status = queue_status(con)
    lines = [
        f"{status['annotators']} annotators, {status['live_leases']} items on loan, "
        f"{status['ratings']} ratings, {status['skips']} skips, {status['refused']} refused",
        f"{'kind':<12}{'items':>7}{'gold':>6}{'unrated':>9}{'started':>9}{'complete':>10}",
    ]
    for kind, c in status["items"].items():
        lines.append(
            f"{kind:<12}{c['items']:>7}{c['gold']:>6}{c['unrated']:>9}{c['started']:>9}"
            f"{c['complete']:>10}"
        )
    people = annotator_report(con)
    if people:
        lines.append(
            f"{'annotator':<16}{'ratings':>8}{'skips':>6}{'gold acc. [95% CI]':>26}"
            f"{'median s':>10}{'per hour':>10}"
        )
    for a in people:
        gold = (
            f"{a.gold_accuracy:.2f} [{a.gold_low:.2f}, {a.gold_high:.2f}] ({a.gold_checked})"
            if a.gold_checked
            else "-"
        )
        median = f"{a.median_shown_s:.1f}" if a.median_shown_s is not None else "-"
        pace = f"{a.per_hour:.0f}" if a.per_hour is not None else "-"
        lines.append(f"{a.annotator:<16}{a.ratings:>8}{a.skips:>6}{gold:>26}{median:>10}{pace:>10}")
    return "\n".join(lines)


def format_ranking(ranking: Ranking, comparisons: list[HeadToHead]) -> str:
    lines = [
        f"Bradley-Terry over {ranking.comparisons} judgements on {ranking.prompts} prompts "
        f"(ties half; 95% CI from {ranking.n_resamples} resamples of prompts, seed "
        f"{ranking.seed}, prior {ranking.prior})",
        f"{'model':<28}{'log-strength':>13}{'95% CI':>20}{'wins':>9}{'judged':>8}",
    ]
    for s in ranking.strengths:
        # Without a prior, a resample where a model wins all or none has no fit: no interval.
        finite = math.isfinite(s.low) and math.isfinite(s.high)
        ci = f"[{s.low:+.3f}, {s.high:+.3f}]" if finite else "undefined"
        lines.append(f"{s.model:<28}{s.theta:>+13.3f}{ci:>20}{s.wins:>9g}{s.comparisons:>8}")
    for c in comparisons:
        w, p = c.win_rate, c.plan
        more = "undecidable (win rate at the bar)" if p.more == float("inf") else f"{p.more:.0f}"
        lines.append(
            f"{c.candidate} over {c.baseline}: win rate {w.value:.3f} [{w.low:.3f}, {w.high:.3f}]"
            f" ({w.wins} wins, {w.ties} ties, {w.losses} losses); to tell it from "
            f"{p.threshold} at {p.power:.0%} power: {more} more judgements"
        )
    return "\n".join(lines)
