"""Compare two complete runs of the same suite, example by example.

For every metric of every task: the baseline and candidate values, the difference with a 95%
paired bootstrap interval (the same resampled examples for both runs, one draw shared by all
metrics), a p-value from a paired test (significant below alpha), which direction of the
metric is better, and the smallest difference the sample could detect at 80% power. The same
comparison can be broken down by any metadata field (topic, source, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import duckdb
import numpy as np
from scipy import stats as scipy_stats

from evalkit.errors import EvalkitError
from evalkit.metrics import DEGENERATION_FLAGS, RunMetric
from evalkit.results import check_same_suite, complete_run
from evalkit.stats import ALPHA, MIN_RESAMPLES, N_RESAMPLES, SEED
from evalkit.stats.significance import (
    bootstrap_sums,
    mcnemar_p_value,
    percentile_interval,
    permutation_p_values,
)
from evalkit.suite import task_name
from evalkit.tasks import metrics_of


def interval_label(alpha: float) -> str:
    """The header of an interval at 1 - alpha: '95% CI', '99.9% CI'."""
    return f"{100 * (1 - alpha):.4g}% CI"


@dataclass
class TaskScores:
    """One run's per-example scores of one task, rows in ``example_ids`` order."""

    example_ids: list[str]
    columns: list[str]
    table: np.ndarray  # (examples, columns)
    metadata: list[dict] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        return self.table[:, self.columns.index(name)]

    def subset(self, rows: np.ndarray) -> TaskScores:
        return TaskScores(
            [self.example_ids[i] for i in rows],
            self.columns,
            self.table[rows],
            [self.metadata[i] for i in rows],
        )


def load_scores(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, TaskScores]:
    """Every task's score table of a run, examples sorted by id."""
    out = {}
    tasks = con.execute(
        "SELECT DISTINCT task FROM eval_scores WHERE run_id = ? ORDER BY task", [run_id]
    ).fetchall()
    for (task,) in tasks:
        examples = con.execute(
            "SELECT example_id, metadata FROM eval_examples WHERE run_id = ? AND task = ? "
            "ORDER BY example_id",
            [run_id, task],
        ).fetchall()
        columns = con.execute(
            "SELECT DISTINCT metric FROM eval_scores WHERE run_id = ? AND task = ? ORDER BY metric",
            [run_id, task],
        ).fetchall()
        # Rows by the example's place among the task's examples, so an example without a score
        # stays empty (NaN) instead of taking the next one's.
        cells = con.execute(
            "WITH s AS (SELECT * FROM eval_scores WHERE run_id = $1 AND task = $2), "
            "m AS (SELECT metric, row_number() OVER (ORDER BY metric) - 1 AS col "
            "FROM (SELECT DISTINCT metric FROM s)), "
            "e AS (SELECT example_id, row_number() OVER (ORDER BY example_id) - 1 AS row "
            "FROM eval_examples WHERE run_id = $1 AND task = $2) "
            "SELECT e.row, m.col, s.value FROM s JOIN e USING (example_id) JOIN m USING (metric)",
            [run_id, task],
        ).fetchnumpy()
        table = np.full((len(examples), len(columns)), np.nan)
        table[np.asarray(cells["row"]), np.asarray(cells["col"])] = np.asarray(cells["value"])
        out[task] = TaskScores(
            [e for e, _ in examples],
            [m for (m,) in columns],
            table,
            [json.loads(m) if m else {} for _, m in examples],
        )
    return out


@dataclass
class MetricComparison:
    task: str
    metric: str
    baseline: float
    candidate: float
    difference: float
    low: float
    high: float
    p_value: float
    test: str
    n: int
    higher_is_better: bool | None
    min_detectable: float  # at 80% power and the comparison's alpha, from the bootstrap spread
    # The same for the relative change, (candidate - baseline) / |baseline| resampled as
    # such (NaN for a baseline of 0).
    relative_low: float = math.nan
    relative_high: float = math.nan
    relative_min_detectable: float = math.nan
    alpha: float = ALPHA  # the intervals are at 1 - alpha confidence

    @property
    def relative(self) -> float:
        return self.difference / abs(self.baseline) if self.baseline else math.inf

    @property
    def significant(self) -> bool:
        """The paired test rejects "no difference" at alpha; an undefined interval (NaN: the
        resamples could not measure the difference) is no evidence, whatever the p-value."""
        return self.p_value < self.alpha and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def candidate_better(self) -> bool | None:
        """Whether the candidate moved in the metric's better direction (None: the metric has
        no better direction, or nothing moved)."""
        if self.higher_is_better is None or not self.difference:
            return None
        return (self.difference > 0) == self.higher_is_better

    @property
    def better(self) -> str:
        """Which way the metric is better, as the table shows it."""
        return {True: "higher", False: "lower", None: "-"}[self.higher_is_better]

    def note(self) -> str:
        """'significant', with whether the candidate is better or worse where that is known."""
        if not self.significant:
            return ""
        moved = {True: ": candidate better", False: ": candidate worse", None: ""}
        return "significant" + moved[self.candidate_better]


@dataclass
class Comparison:
    baseline: dict
    candidate: dict
    metrics: list[MetricComparison]
    breakdown: dict[str, dict[str, list[MetricComparison]]]  # field -> value -> metrics
    n_resamples: int
    seed: int
    alpha: float
    scores: tuple[dict[str, TaskScores], dict[str, TaskScores]]  # for the worst examples

    def find(self, metric: str, task: str | None = None) -> MetricComparison:
        found = [m for m in self.metrics if m.metric == metric and task in (None, m.task)]
        if not found:
            names = sorted({f"{m.task}/{m.metric}" for m in self.metrics})
            raise EvalkitError(
                f"no metric {metric!r}" + (f" in task {task!r}" if task else "") + " in the runs",
                hint=f"known: {', '.join(names)}",
            )
        if len(found) > 1:
            tasks = ", ".join(m.task for m in found)
            raise EvalkitError(f"metric {metric!r} is in several tasks ({tasks}): name the task")
        return found[0]

    def to_dict(self) -> dict:
        def rows(items):
            return [
                {
                    **asdict(m),
                    "relative": m.relative,
                    "significant": m.significant,
                    "candidate_better": m.candidate_better,
                }
                for m in items
            ]

        return finite(
            {
                "baseline": _run_info(self.baseline),
                "candidate": _run_info(self.candidate),
                "n_resamples": self.n_resamples,
                "seed": self.seed,
                "alpha": self.alpha,
                "metrics": rows(self.metrics),
                "breakdown": {
                    f: {v: rows(ms) for v, ms in values.items()}
                    for f, values in self.breakdown.items()
                },
            }
        )

    def table(self) -> str:
        """The comparison as text: every metric with the direction that is better, its
        difference, interval, p-value (significant below alpha) and the smallest difference the
        sample detects, then the same per slice of each ``by`` field."""
        sections = [("", self.metrics)] + [
            (f"{field}={value}", metrics)
            for field, values in self.breakdown.items()
            for value, metrics in values.items()
        ]
        lines = []
        for title, metrics in sections:
            if title:
                lines += ["", title]
            lines.append(
                f"{'task':<24} {'metric':<16} {'better':>6} {'baseline':>10} {'candidate':>10} "
                f"{'diff':>10} "
                f"{interval_label(self.alpha):>22} {'p':>7} {'detectable':>10}  note"
            )
            for m in metrics:
                ci = f"[{m.low:.4g}, {m.high:.4g}]"
                note = m.note()
                if m.metric in DEGENERATION_FLAGS:  # flagged responses, counted
                    counts = f"{round(m.baseline * m.n)} -> {round(m.candidate * m.n)} of {m.n}"
                    note = f"{counts}, {note}" if note else counts
                lines.append(
                    f"{m.task:<24} {m.metric:<16} {m.better:>6} {m.baseline:>10.4g} "
                    f"{m.candidate:>10.4g} "
                    f"{m.difference:>+10.4g} {ci:>22} {m.p_value:>7.3g} {m.min_detectable:>10.3g}  "
                    f"{note}"
                )
        return "\n".join(lines)


def _run_info(run: dict) -> dict:
    keys = ("run_id", "name", "model_path", "model_hash", "chat_template_fingerprint")
    return {k: run.get(k) for k in keys} | {
        "suite": run.get("suite_name"),
        "suite_hash": run.get("suite_hash"),
        "code_version": run.get("code_version"),
        "finished_at": str(run.get("finished_at")),
        "lineage": run.get("lineage") or {},
        "signatures": signatures(run),
    }


def signatures(run: dict) -> dict[str, dict[str, str]]:
    """sacrebleu's signature of each reference metric, by generation task, as the run stored."""
    summary = run.get("summary") or {}
    return {
        task: s["signatures"]
        for task, s in summary.items()
        if isinstance(s, dict) and s.get("signatures")
    }


def _sacrebleu_p_value(dist_b: np.ndarray, dist_c: np.ndarray, observed: float) -> float:
    """sacrebleu's paired bootstrap p-value: resampled |differences|, centred, at or beyond the
    observed |difference| (Koehn 2004, as in sacrebleu.significance). sacrebleu counts only
    those strictly beyond, which calls two identical systems different (p = 1/(k+1)); counting
    ties too gives p = 1 there and the same value otherwise."""
    sample = np.abs(dist_c - dist_b)
    centred = sample - sample.mean()
    return float((np.sum(centred >= abs(observed)) + 1) / (len(sample) + 1))


Entry = tuple[
    str, Sequence[RunMetric], TaskScores, TaskScores
]  # task, metrics, baseline, candidate


def compare_tables(
    entries: Sequence[Entry], *, n_resamples: int, seed: int, alpha: float = ALPHA
) -> list[MetricComparison]:
    """Every metric of the given tasks (all with the same number of examples), from one set of
    bootstrap resamples and one set of permutations shared by all of them; intervals at
    1 - alpha confidence, the smallest detectable change at alpha and 80% power."""
    keys = sorted(
        {(task, col) for task, metrics, _, _ in entries for m in metrics for col in m.columns}
    )
    index = {key: i for i, key in enumerate(keys)}
    tables = {task: (b, c) for task, _, b, c in entries}
    for task, col in keys:
        for run, table in zip(("baseline", "candidate"), tables[task]):
            missing = ~np.isfinite(table.column(col))
            if missing.any():
                ids = [table.example_ids[i] for i in np.flatnonzero(missing)[:3]]
                raise EvalkitError(
                    f"the {run} run's {task}/{col} is missing or not a number for "
                    f"{int(missing.sum())} examples (e.g. {', '.join(map(str, ids))})",
                    hint="evaluate the model again: a run's scores must cover every example",
                )
    b = np.column_stack([tables[task][0].column(col) for task, col in keys])
    c = np.column_stack([tables[task][1].column(col) for task, col in keys])
    few = len(b) < 2  # one example: no spread to resample, nothing can be shown significant
    width = len(keys)
    sums = bootstrap_sums(np.hstack([b, c]), n_resamples=n_resamples, seed=seed)
    size = sums[:, -1:]
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(0.8)
    permuted = sorted(
        {(task, m.test_column) for task, ms, _, _ in entries for m in ms if m.test == "permutation"}
    )
    diffs = np.column_stack([c[:, index[k]] - b[:, index[k]] for k in permuted] or [b[:, :0]])
    p_values = dict(zip(permuted, permutation_p_values(diffs, n_resamples=n_resamples, seed=seed)))
    out = []
    for task, metrics, _, _ in entries:
        for metric in metrics:
            idx = [index[(task, col)] for col in metric.columns]
            dist_b = metric.aggregate(np.hstack([sums[:, idx], size]))
            dist_c = metric.aggregate(np.hstack([sums[:, [width + i for i in idx]], size]))
            value_b, value_c = metric.value(b[:, idx]), metric.value(c[:, idx])
            observed = value_c - value_b
            dist = dist_c - dist_b
            low, high = percentile_interval(dist, 1 - alpha)
            if metric.test == "mcnemar":
                col = index[(task, metric.test_column)]
                p = mcnemar_p_value(b[:, col] > 0.5, c[:, col] > 0.5)
            elif metric.test == "permutation":
                p = float(p_values[(task, metric.test_column)])
            else:
                p = _sacrebleu_p_value(dist_b, dist_c, observed)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = dist / np.abs(dist_b)  # each resample's relative change
            if value_b == 0 or not np.isfinite(ratio).all():
                relative = math.nan, math.nan, math.nan
            else:
                spread = math.inf if few else float(z * np.std(ratio, ddof=1))
                relative = *percentile_interval(ratio, 1 - alpha), spread
            out.append(
                MetricComparison(
                    task,
                    metric.name,
                    value_b,
                    value_c,
                    observed,
                    low,
                    high,
                    1.0 if few else p,
                    metric.test,
                    len(b),
                    metric.higher_is_better,
                    math.inf if few else float(z * np.std(dist, ddof=1)),
                    *relative,
                    alpha,
                )
            )
    return out


def _compare_by_size(
    entries: list[Entry], n_resamples: int, seed: int, alpha: float
) -> list[MetricComparison]:
    """Tasks with as many examples share their resamples; results in the order of entries."""
    sizes: dict[int, list[Entry]] = {}
    for entry in entries:
        sizes.setdefault(len(entry[2].example_ids), []).append(entry)
    found = {}
    for group in sizes.values():
        for m in compare_tables(group, n_resamples=n_resamples, seed=seed, alpha=alpha):
            found.setdefault(m.task, []).append(m)
    return [m for task, *_ in entries for m in found[task]]


def _paired(task: str, b: TaskScores, c: TaskScores) -> None:
    if b.example_ids != c.example_ids:
        raise EvalkitError(
            f"task {task}: the two runs scored different examples",
            hint="compare runs of the same suite on the same data",
        )


def finite(value):
    """``value`` with NaN and infinity as None, at any depth: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def compare_runs(
    con: duckdb.DuckDBPyConnection,
    baseline_id: str,
    candidate_id: str,
    *,
    by: Sequence[str] = (),
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    alpha: float = ALPHA,
) -> Comparison:
    """Compare two complete runs of one suite; ``by`` lists metadata fields to break down by;
    intervals at 1 - alpha confidence."""
    baseline = complete_run(con, baseline_id)
    candidate = complete_run(con, candidate_id)
    check_same_suite(baseline, candidate)
    if n_resamples < MIN_RESAMPLES:
        raise EvalkitError(f"at least {MIN_RESAMPLES:,} bootstrap resamples are needed")
    if not 0 < alpha < 0.5:
        raise EvalkitError(f"alpha {alpha} is not a significance level", hint="e.g. 0.05")
    scores_b, scores_c = load_scores(con, baseline["run_id"]), load_scores(con, candidate["run_id"])
    suite_tasks = {task_name(spec): spec for spec in baseline["suite"].get("tasks", [])}
    entries: list[Entry] = []
    for task, b in scores_b.items():
        c = scores_c[task]
        _paired(task, b, c)
        entries.append((task, metrics_of(suite_tasks[task], set(b.columns)), b, c))
    metrics = _compare_by_size(entries, n_resamples, seed, alpha)
    breakdown: dict[str, dict[str, list[MetricComparison]]] = {f: {} for f in by}
    for name in by:
        if not any(name in m for _, _, b, _ in entries for m in b.metadata):
            fields = sorted({k for _, _, b, _ in entries for m in b.metadata for k in m})
            raise EvalkitError(
                f"no example of run {baseline['run_id']} has the metadata field {name!r}",
                hint=f"fields: {', '.join(fields) or 'none'}",
            )
        slices: dict[str, list[Entry]] = {}
        for task, task_metrics, b, c in entries:
            values = np.array([str(m.get(name)) for m in b.metadata])
            for value in sorted(set(values)):
                rows = np.flatnonzero(values == value)
                slices.setdefault(value, []).append(
                    (task, task_metrics, b.subset(rows), c.subset(rows))
                )
        for value, sliced in slices.items():
            breakdown[name][value] = _compare_by_size(sliced, n_resamples, seed, alpha)
    return Comparison(
        baseline, candidate, metrics, breakdown, n_resamples, seed, alpha, (scores_b, scores_c)
    )
