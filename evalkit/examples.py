"""A run's per-example rows for reading: prompt, reference, output and scores of each example.

What lm-eval's ``--log_samples`` writes and promptfoo's ``view`` shows: ``evalkit runs RUN
--examples`` prints them, optionally one task's, worst first by a metric, or as JSON lines.
"""

from __future__ import annotations

import json
import math
import textwrap

import duckdb

from evalkit.compare import load_scores
from evalkit.errors import EvalkitError, unknown_name
from evalkit.results import get_run, prompt_messages
from evalkit.suite import task_name
from evalkit.tasks import metrics_of


def run_examples(
    con: duckdb.DuckDBPyConnection,
    run: str,
    *,
    task: str | None = None,
    worst: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """The examples of a run (of ``task``: all), in task and id order, or worst first by the
    run-level metric ``worst`` (each example's own value, in the metric's bad direction).

    >>> run_examples(con, "prod", worst="bleu", limit=10)
    """
    found = get_run(con, run)
    run_id = found["run_id"]
    tasks = [
        t
        for (t,) in con.execute(
            "SELECT DISTINCT task FROM eval_examples WHERE run_id = ? ORDER BY task", [run_id]
        ).fetchall()
    ]
    if task is not None and task not in tasks:
        raise unknown_name("task", task, tasks, where=f"run {run_id}")
    rows = con.execute(
        "SELECT e.task, e.example_id, e.prompt, e.reference, e.output, e.metadata, "
        "list(s.metric ORDER BY s.metric) FILTER (WHERE s.metric IS NOT NULL), "
        "list(s.value ORDER BY s.metric) FILTER (WHERE s.metric IS NOT NULL) "
        "FROM eval_examples e LEFT JOIN eval_scores s USING (run_id, task, example_id) "
        "WHERE e.run_id = ? AND (? IS NULL OR e.task = ?) "
        "GROUP BY ALL ORDER BY e.task, e.example_id",
        [run_id, task, task],
    ).fetchall()
    examples = [
        {
            "run_id": run_id,
            "task": t,
            "example_id": example_id,
            "prompt": prompt_messages(prompt),
            "reference": reference,
            "output": output,
            "metadata": json.loads(metadata) if metadata else {},
            "scores": dict(zip(metrics or [], values or [])),
        }
        for t, example_id, prompt, reference, output, metadata, metrics, values in rows
    ]
    if worst is not None:
        examples = _worst_first(con, found, examples, worst, task)
    return examples[:limit]


def _worst_first(con, run: dict, examples: list[dict], metric: str, task: str | None) -> list:
    """The examples of the tasks that have ``metric``, each with its own value, worst first."""
    specs = {task_name(s): s for s in (run["suite"] or {}).get("tasks", [])}
    scores = load_scores(con, run["run_id"])
    ranked, known = [], set()
    for name, table in scores.items():
        if task not in (None, name) or name not in specs:
            continue
        metrics = {m.name: m for m in metrics_of(specs[name], set(table.columns))}
        known |= set(metrics)
        if metric not in metrics:
            continue
        m = metrics[metric]
        if m.higher_is_better is None:
            raise EvalkitError(
                f"{metric} is better neither higher nor lower, so no example is the worst",
                hint="rank by a metric with a direction (bleu, perplexity, repetitive, ...)",
            )
        values = dict(zip(table.example_ids, m.per_example(table.column).tolist()))
        sign = 1 if m.higher_is_better else -1  # the lowest key is the worst
        ranked += [
            (sign * values[e["example_id"]], {**e, metric: values[e["example_id"]]})
            for e in examples
            if e["task"] == name
        ]
    if not ranked:
        raise unknown_name("metric", metric, known, where=f"run {run['run_id']}")
    return [e for _, e in sorted(ranked, key=lambda pair: pair[0])]


def format_examples(examples: list[dict], worst: str | None = None) -> str:
    """The examples as text for the terminal: a header line per example, then its texts."""
    blocks = []
    for e in examples:
        head = f"{e['task']}  {e['example_id']}"
        if worst is not None:
            head += f"  {worst} {e[worst]:.4g}"
        # Sufficient statistics (bleu.0, ...) are for aggregation, not for reading.
        shown = {k: v for k, v in e["scores"].items() if "." not in k and math.isfinite(v)}
        if shown:
            head += "  (" + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())) + ")"
        lines = [head]
        for turn in e["prompt"]:
            lines.append(_field(turn.get("role", "prompt"), turn.get("content", "")))
        for key in ("reference", "output"):
            if e[key] is not None:
                lines.append(_field(key, e[key]))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _field(label: str, text: str) -> str:
    return textwrap.indent(f"{label}: {text}", "  ")
