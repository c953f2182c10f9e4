"""Evaluation runs in the store: one row per run, one row per example, one row per score.

A run is written as ``running``, its examples are added task by task, and only
:func:`finish_run` marks it ``complete``; a run that died halfway stays ``running`` (or
``failed``) and is never read as a result. A complete run's numbers are immutable: only its
name can change (:func:`rename_run`), and only :func:`remove_run`, on the user's request, deletes
it. Scores are kept per example, so two runs can be compared example by example.

A run is named by its id, a unique prefix of it, or its name. Names may repeat (the same suite
run again under the same name): a name means its latest complete run, so an interrupted or
failed run never takes a name from the one that finished.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb

from evalkit.errors import EvalkitError
from evalkit.store import insert_columns, transaction

log = logging.getLogger(__name__)

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


def _runs(con: duckdb.DuckDBPyConnection, where: str, params: list) -> list[dict]:
    rows = con.execute(f"SELECT * FROM eval_runs WHERE {where} ORDER BY started_at", params)
    names = [d[0] for d in rows.description]
    return [dict(zip(names, row)) for row in rows.fetchall()]


def resolve(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """The id of the run that ``ref`` names: an exact id, else a name, else a unique id prefix.

    A name shared by several runs means the latest complete one (or, when none completed, the
    latest one, which callers then refuse as unfinished); the choice is logged.
    """
    ensure_schema(con)
    if _runs(con, "run_id = ?", [ref]):
        return ref
    named = _runs(con, "name = ?", [ref])
    if named:
        complete = [r for r in named if r["status"] == "complete"]
        chosen = (complete or named)[-1]
        if len(named) > 1:
            what = "latest complete" if complete else "latest (none is complete)"
            log.warning(
                "%r names %d runs; using the %s one, %s of %s",
                ref, len(named), what, chosen["run_id"], str(chosen["started_at"])[:19],
            )  # fmt: skip
        return chosen["run_id"]
    found = _runs(con, "starts_with(run_id, ?)", [ref])
    if not found:
        raise EvalkitError(
            f"no evaluation run {ref!r} in the store", hint="`evalkit runs` lists the runs"
        )
    if len(found) > 1:
        ids = ", ".join(r["run_id"] for r in found)
        raise EvalkitError(f"{ref!r} starts several run ids ({ids})", hint="give more of the id")
    return found[0]["run_id"]


def get_run(con: duckdb.DuckDBPyConnection, ref: str) -> dict:
    """One run as a dict (JSON columns decoded), named as :func:`resolve` reads a name."""
    run = _runs(con, "run_id = ?", [resolve(con, ref)])[0]
    for key in ("suite", "lineage", "summary"):
        if run[key] is not None:
            run[key] = json.loads(run[key])
    return run


def latest_complete(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """The id of the latest complete run called ``name``, if any."""
    ensure_schema(con)
    found = _runs(con, "name = ? AND status = 'complete'", [name])
    return found[-1]["run_id"] if found else None


def rename_run(con: duckdb.DuckDBPyConnection, ref: str, name: str) -> str:
    """Give a run a new name; a name that another complete run holds is refused. Returns the id."""
    run_id = resolve(con, ref)
    holder = latest_complete(con, name)
    if holder not in (None, run_id):
        raise EvalkitError(
            f"the name {name!r} already means run {holder}",
            hint="rename or remove that run first (`evalkit runs rename`, `evalkit runs rm`)",
        )
    con.execute("UPDATE eval_runs SET name = ? WHERE run_id = ?", [name, run_id])
    return run_id


def remove_run(con: duckdb.DuckDBPyConnection, ref: str) -> dict:
    """Delete a run and its per-example rows, in one transaction; returns what was removed.

    Reports and rating items keep their own copies of what they showed.
    """
    run = get_run(con, ref)
    with transaction(con):
        for table in ("eval_scores", "eval_examples", "eval_runs"):
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run["run_id"]])
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


def check_same_suite(baseline: dict, candidate: dict) -> None:
    """Two runs measured the same thing: one suite (its tasks, decoding settings) on the same
    data. Anything that sets them side by side (compare, the gate, A/B rating) checks this."""
    if baseline["suite_hash"] != candidate["suite_hash"]:
        raise EvalkitError(
            f"runs {baseline['run_id']} ({baseline['suite_name']}) and {candidate['run_id']} "
            f"({candidate['suite_name']}) are of different suites, decoding settings or data",
            hint="evaluate both models with the same suite file and datasets",
        )


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
