"""What the Releases page shows of two runs and of a model: the comparison as table rows
(overall and per slice), the examples that got worse most, and the lineage of a model from its
dataset to the version served.

The lineage follows the records each step leaves: the training's ``evalkit_lineage.json``
beside the weights (dataset, training run, base model), the evaluation runs of the model's
hash, the gate reports of those runs, and the events the server logged with that hash as
``model_version``.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb

from evalkit.compare import Comparison, MetricComparison, interval_label
from evalkit.errors import EvalkitError
from evalkit.gate.judge import RuleResult, worst_examples
from evalkit.gate.report import REPORTS_SCHEMA
from evalkit.results import get_run


def metric_rows(metrics: list[MetricComparison], alpha: float) -> list[dict]:
    """One row per compared metric, as the page's tables show them."""
    return [
        {
            "task": m.task,
            "metric": m.metric,
            "better": m.better,
            "baseline": m.baseline,
            "candidate": m.candidate,
            "difference": m.difference,
            "low": m.low,
            "high": m.high,
            interval_label(alpha): f"[{m.low:.4g}, {m.high:.4g}]",
            "p": m.p_value,
            "note": m.note(),
        }
        for m in metrics
    ]


def slice_rows(comparison: Comparison, field: str) -> list[dict]:
    """The comparison per value of the metadata field ``field`` (compared with ``by``)."""
    if field not in comparison.breakdown:
        raise EvalkitError(f"the comparison was not broken down by {field!r}")
    return [
        {field: value, **row}
        for value, metrics in comparison.breakdown[field].items()
        for row in metric_rows(metrics, comparison.alpha)
    ]


def metadata_fields(comparison: Comparison) -> list[str]:
    """The metadata fields of the baseline's examples: what a comparison can be sliced by."""
    return sorted(
        {k for scores in comparison.scores[0].values() for m in scores.metadata for k in m}
    )


def worst(
    con: duckdb.DuckDBPyConnection, comparison: Comparison, task: str, metric: str
) -> list[dict]:
    """The examples that moved most in ``metric``'s bad direction (an increase when it has
    none), with both runs' responses."""
    m = next((m for m in comparison.metrics if (m.task, m.metric) == (task, metric)), None)
    if m is None:
        raise EvalkitError(f"no metric {metric!r} of task {task!r} in the comparison")
    sign = -1 if m.higher_is_better else 1
    nan = math.nan
    result = RuleResult("", metric, task, "", nan, nan, nan, nan, nan)
    return worst_examples(con, comparison, result, sign)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> list[dict]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _served(events_dir: Path | None, model_hash: str) -> dict | None:
    if events_dir is None or not any(Path(events_dir).glob("date=*/*.parquet")):
        return None
    from evalkit.events import query

    (row,) = query(
        events_dir,
        "SELECT count(*) AS exchanges, min(timestamp) AS first, max(timestamp) AS last, "
        "any_value(model) AS name FROM events WHERE type = 'exchange' AND model_version = ?",
        [model_hash],
    )
    return row if row["exchanges"] else None


def lineage(con: duckdb.DuckDBPyConnection, run: str, events_dir: Path | None = None) -> list[dict]:
    """The chain of the model that evaluation run ``run`` measured, one row per step (dataset,
    training run, model, evaluation runs, gate reports, served version); a step with no record
    says so. An unknown run raises the store's "no evaluation run" error."""
    found = get_run(con, run)
    model_hash = found["model_hash"]
    trained = found["lineage"] or {}
    chain = [
        {
            "step": "dataset",
            "id": (trained.get("dataset_hash") or "")[:12] or "unknown",
            "detail": trained.get("dataset") or "not trained by evalkit (no lineage record)",
        },
        {
            "step": "training run",
            "id": Path(trained["training_run"]).name if trained.get("training_run") else "unknown",
            "detail": trained.get("training_run", "no record")
            + (f" (from {trained['base_model']})" if trained.get("base_model") else ""),
        },
        {
            "step": "model",
            "id": (model_hash or "")[:12] or "unknown",
            "detail": found["model_path"] or "",
        },
    ]
    runs = _rows(
        con,
        "SELECT run_id, name, suite_name, status FROM eval_runs "
        "WHERE model_hash = ? OR run_id = ? ORDER BY started_at",
        [model_hash, found["run_id"]],
    )
    chain += [
        {"step": "evaluation run", "id": r["run_id"],
         "detail": f"{r['name'] or ''} · suite {r['suite_name']} · {r['status']}"}
        for r in runs
    ]  # fmt: skip
    con.execute(REPORTS_SCHEMA)
    reports = _rows(
        con,
        "SELECT report_id, baseline_run, candidate_run, verdict, path FROM gate_reports "
        "WHERE list_contains(?, candidate_run) ORDER BY created_at",
        [[r["run_id"] for r in runs]],
    )
    chain += [
        {"step": "gate", "id": r["report_id"],
         "detail": f"{r['verdict']}: {r['candidate_run']} against {r['baseline_run']}"}
        for r in reports
    ] or [{"step": "gate", "id": "", "detail": "not gated yet"}]  # fmt: skip
    served = _served(events_dir, model_hash) if model_hash else None
    chain.append(
        {
            "step": "served version",
            "id": (model_hash or "")[:12] if served else "",
            "detail": f"{served['exchanges']} exchanges as {served['name']} from "
            f"{served['first']:%Y-%m-%d %H:%M} to {served['last']:%Y-%m-%d %H:%M}"
            if served
            else "not seen in the event log",
        }
    )
    return chain
