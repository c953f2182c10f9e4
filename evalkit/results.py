"""Evaluation runs in the store: one row per run, one row per example, one row per score.

A run is written as ``running``, its examples are added task by task, and only
:func:`finish_run` marks it ``complete``; a run that died halfway stays ``running`` (or
``failed``) and is never read as a result. A complete run is immutable: nothing updates or
deletes its rows. Scores are kept per example, so two runs can be compared example by example.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb

from evalkit.errors import EvalkitError
from evalkit.store import insert_columns, transaction

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS eval_runs (
        run_id VARCHAR PRIMARY KEY,
        name VARCHAR,
        model_path VARCHAR,
        model_hash VARCHAR,
        chat_template_fingerprint VARCHAR,
        suite_name VARCHAR,
        suite_hash VARCHAR,
        suite JSON,
        code_version VARCHAR,
        lineage JSON,
        status VARCHAR,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        summary JSON
    )""",
    """CREATE TABLE IF NOT EXISTS eval_examples (
        run_id VARCHAR,
        task VARCHAR,
        example_id VARCHAR,
        prompt VARCHAR,
        reference VARCHAR,
        output VARCHAR,
        metadata JSON,
        PRIMARY KEY (run_id, task, example_id)
    )""",
    """CREATE TABLE IF NOT EXISTS eval_scores (
        run_id VARCHAR,
        task VARCHAR,
        example_id VARCHAR,
        metric VARCHAR,
        value DOUBLE,
        PRIMARY KEY (run_id, task, example_id, metric)
    )""",
)


@dataclass
class ExampleResult:
    """What one task measured on one example.

    ``prompt`` is the conversation shown to the model (JSON of its messages) or the text scored;
    ``output`` the model's response, when it generated one; ``scores`` the per-example values
    that compare and gate resample.
    """

    task: str
    example_id: str
    scores: dict[str, float]
    metadata: dict = field(default_factory=dict)
    prompt: str | None = None
    reference: str | None = None
    output: str | None = None


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for statement in SCHEMA:
        con.execute(statement)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def create_run(con: duckdb.DuckDBPyConnection, **fields) -> str:
    """Insert a new ``running`` run; ``fields`` are columns of ``eval_runs``. Returns its id."""
    ensure_schema(con)
    run_id = fields.pop("run_id", None) or uuid.uuid4().hex[:12]
    for key in ("suite", "lineage", "summary"):
        if key in fields and not isinstance(fields[key], str):
            fields[key] = json.dumps(fields[key], sort_keys=True)
    columns = ["run_id", "status", "started_at", *fields]
    values = [run_id, "running", _now(), *fields.values()]
    con.execute(
        f"INSERT INTO eval_runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(values))})",
        values,
    )
    return run_id


def add_results(
    con: duckdb.DuckDBPyConnection, run_id: str, results: Iterable[ExampleResult]
) -> int:
    """Append per-example rows of a running run, in one transaction."""
    examples, scores = [], []
    for r in results:
        examples.append(
            (
                run_id,
                r.task,
                r.example_id,
                r.prompt,
                r.reference,
                r.output,
                json.dumps(r.metadata, sort_keys=True),
            )
        )
        scores.extend((run_id, r.task, r.example_id, m, float(v)) for m, v in r.scores.items())
    if get_run(con, run_id)["status"] != "running":
        raise EvalkitError(f"run {run_id} is finished; a finished run cannot change")
    with transaction(con):
        insert_columns(con, "eval_examples", examples, ["VARCHAR"] * 6 + ["JSON"])
        insert_columns(con, "eval_scores", scores, ["VARCHAR"] * 4 + ["DOUBLE"])
    return len(examples)


def finish_run(
    con: duckdb.DuckDBPyConnection, run_id: str, *, summary: dict, status: str = "complete"
) -> None:
    con.execute(
        "UPDATE eval_runs SET status = ?, finished_at = ?, summary = ? "
        "WHERE run_id = ? AND status = 'running'",
        [status, _now(), json.dumps(summary, sort_keys=True), run_id],
    )


def get_run(con: duckdb.DuckDBPyConnection, run_id: str) -> dict:
    """One run as a dict (JSON columns decoded); a unique id prefix is enough."""
    ensure_schema(con)
    rows = con.execute(
        "SELECT * FROM eval_runs WHERE run_id LIKE ? || '%' OR name = ? ORDER BY started_at",
        [run_id, run_id],
    )
    names = [d[0] for d in rows.description]
    found = [dict(zip(names, row)) for row in rows.fetchall()]
    if not found:
        raise EvalkitError(
            f"no evaluation run {run_id!r} in the store", hint="`evalkit runs` lists the runs"
        )
    if len(found) > 1:
        ids = ", ".join(r["run_id"] for r in found)
        raise EvalkitError(f"{run_id!r} names several runs ({ids})", hint="give the run id")
    run = found[0]
    for key in ("suite", "lineage", "summary"):
        if run[key] is not None:
            run[key] = json.loads(run[key])
    return run


def list_runs(con: duckdb.DuckDBPyConnection) -> list[dict]:
    ensure_schema(con)
    rows = con.execute(
        "SELECT run_id, name, status, suite_name, model_hash, started_at, finished_at "
        "FROM eval_runs ORDER BY started_at"
    )
    names = [d[0] for d in rows.description]
    return [dict(zip(names, row)) for row in rows.fetchall()]


def complete_run(con: duckdb.DuckDBPyConnection, run_id: str) -> dict:
    """A run that may be read as a result: it must have finished."""
    run = get_run(con, run_id)
    if run["status"] != "complete":
        raise EvalkitError(
            f"run {run['run_id']} is {run['status']}, not complete; its numbers are partial",
            hint="run the evaluation again: finished generations are cached and reused",
        )
    return run


def prompt_messages(prompt: str | None) -> list[dict]:
    """A stored prompt as messages: its JSON messages, or a plain text as one turn."""
    if not prompt:
        return []
    try:
        messages = json.loads(prompt)
    except ValueError:
        messages = None
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return messages
    return [{"content": prompt}]
