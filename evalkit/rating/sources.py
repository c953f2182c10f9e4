"""Where rating items come from: an evaluation run, a comparison of two runs, production events.

Each function returns :class:`~evalkit.rating.queue.Item` objects;
:func:`evalkit.rating.queue.add_items` queues them. Sampling is seeded, so the same call picks
the same items.

Production events are read from the monitor's Hive-partitioned Parquet log,
``WORKSPACE/events/date=YYYY-MM-DD/*.parquet``. The columns relied on:

==============  ============================================================================
event_id        unique id of the exchange (string)
timestamp       when it happened
model_version   the served model that answered (string)
prompt          the conversation sent: JSON of its messages, or plain text (one user turn)
response        the model's answer (string)
user_feedback   the user's verdict: -1 bad, 0 neutral, 1 good, or null (integer); the log's
                feedback rows (``type`` feedback, by ``response_id``) count for their exchange
drift_flag      set when the drift job flagged the exchange (WORKSPACE/drift/flags, joined by
                evalkit.events.events_view) or a column of the log itself; may be absent
==============  ============================================================================
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np

from evalkit.errors import EvalkitError
from evalkit.events import events_view
from evalkit.rating.queue import Item
from evalkit.results import check_same_suite, complete_run

EVENT_COLUMNS = ("event_id", "timestamp", "model_version", "prompt", "response", "user_feedback")
EVENT_SELECTIONS = ("low_feedback", "drift", "random")
NO_SLICE = "(none)"


@dataclass(frozen=True)
class Selection:
    """Which rows become items, and how they are queued."""

    kind: str = "single"  # single or correction; comparisons always make pairs
    slice_field: str | None = None  # a metadata field (runs) or column (events) to sample by
    per_slice: int | None = None  # items drawn per slice; None takes every row
    seed: int = 0
    priority: int = 0
    overlap: int = 1  # distinct annotators wanted per item

    def __post_init__(self) -> None:
        if self.kind not in ("single", "correction"):
            raise EvalkitError(
                f"item kind {self.kind!r}: a run or events give single or "
                "correction items (pairs come from comparisons)"
            )
        if self.per_slice is not None and self.per_slice < 1:
            raise EvalkitError(f"per slice {self.per_slice}: must be at least 1")
        if self.overlap < 1:
            raise EvalkitError(f"overlap {self.overlap}: an item needs at least one rating")


def as_messages(prompt: str | None) -> list[dict]:
    """A stored prompt as chat messages: JSON messages are kept, plain text is one user turn."""
    try:
        value = json.loads(prompt or "")
    except (json.JSONDecodeError, TypeError):
        value = prompt
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return [{"role": "user", "content": prompt or ""}]


def _sample(rows: list[dict], selection: Selection, slice_of) -> list[dict]:
    """``per_slice`` rows from each slice (all of them when None), seeded, in input order."""
    if selection.per_slice is None:
        return rows
    slices: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        slices[slice_of(row)].append(i)
    rng = np.random.default_rng(selection.seed)
    keep: list[int] = []
    for name in sorted(slices):
        members = slices[name]
        take = min(selection.per_slice, len(members))
        keep.extend(members[j] for j in rng.choice(len(members), size=take, replace=False))
    return [rows[i] for i in sorted(keep)]


def _metadata_slice(field: str | None):
    def slice_of(row: dict) -> str:
        if field is None:
            return NO_SLICE
        value = json.loads(row["metadata"] or "{}").get(field)
        return NO_SLICE if value is None else str(value)

    return slice_of


def _run_rows(
    con: duckdb.DuckDBPyConnection, run_id: str, tasks: list[str] | None = None
) -> list[dict]:
    rows = con.execute(
        "SELECT task, example_id, prompt, output, metadata FROM eval_examples "
        "WHERE run_id = ? AND output IS NOT NULL AND (? IS NULL OR list_contains(?, task)) "
        "ORDER BY task, example_id",
        [run_id, tasks, tasks],
    )
    names = [d[0] for d in rows.description]
    return [dict(zip(names, row)) for row in rows.fetchall()]


def items_from_run(
    con: duckdb.DuckDBPyConnection,
    run: str,
    selection: Selection | None = None,
    *,
    tasks: list[str] | None = None,
) -> list[Item]:
    """Items from the generated responses of a complete evaluation run (of ``tasks``: all)."""
    selection = selection or Selection()
    run_id = complete_run(con, run)["run_id"]
    rows = _run_rows(con, run_id, tasks)
    if not rows:
        raise EvalkitError(
            f"run {run_id} has no generated responses to rate",
            hint="evaluate with a task that generates (its examples store an output)",
        )
    slice_of = _metadata_slice(selection.slice_field)
    return [
        Item(
            kind=selection.kind,
            prompt=as_messages(row["prompt"]),
            response_a=row["output"],
            source={"run": run_id, "task": row["task"], "example_id": row["example_id"]},
            source_a=run_id,
            slice=slice_of(row),
            priority=selection.priority,
            overlap=selection.overlap,
        )
        for row in _sample(rows, selection, slice_of)
    ]


def _a_is_baseline(seed: int, key: list) -> bool:
    """A seeded coin per prompt: the display order does not depend on what else was sampled."""
    digest = hashlib.sha256(json.dumps([seed, *key]).encode()).digest()
    return digest[0] % 2 == 0


def items_from_comparison(
    con: duckdb.DuckDBPyConnection,
    baseline: str,
    candidate: str,
    selection: Selection | None = None,
) -> list[Item]:
    """A/B pairs: the baseline's and the candidate's answers to the same prompt.

    The runs must be of one suite (the same tasks, decoding settings and data), as the gate
    requires: otherwise a preference measures the settings, not the models. Examples are joined
    on (task, example_id). Which answer is shown as A is a seeded coin flip per example, recorded
    in the item (``source_a``/``source_b``).
    """
    selection = selection or Selection()
    base, cand = complete_run(con, baseline), complete_run(con, candidate)
    check_same_suite(base, cand)
    base_id, cand_id = base["run_id"], cand["run_id"]
    if base_id == cand_id:
        raise EvalkitError(f"baseline and candidate are the same run ({base_id})")
    theirs = {(r["task"], r["example_id"]): r for r in _run_rows(con, cand_id)}
    rows = [
        {**r, "candidate_output": theirs[r["task"], r["example_id"]]["output"]}
        for r in _run_rows(con, base_id)
        if (r["task"], r["example_id"]) in theirs
    ]
    if not rows:
        raise EvalkitError(
            f"runs {base_id} and {cand_id} share no example with a generated response",
            hint="compare two runs of the same suite",
        )
    slice_of = _metadata_slice(selection.slice_field)
    items = []
    for row in _sample(rows, selection, slice_of):
        key = [row["task"], row["example_id"]]
        answers = [(base_id, row["output"]), (cand_id, row["candidate_output"])]
        if not _a_is_baseline(selection.seed, key):
            answers.reverse()
        items.append(
            Item(
                kind="pair",
                prompt=as_messages(row["prompt"]),
                response_a=answers[0][1],
                response_b=answers[1][1],
                source={
                    "baseline": base_id,
                    "candidate": cand_id,
                    "task": key[0],
                    "example_id": key[1],
                },
                source_a=answers[0][0],
                source_b=answers[1][0],
                slice=slice_of(row),
                priority=selection.priority,
                overlap=selection.overlap,
            )
        )
    return items


def _event_filter(select: str, columns: set[str]) -> str:
    if select not in EVENT_SELECTIONS:
        raise EvalkitError(
            f"unknown event selection {select!r}", hint=f"one of: {', '.join(EVENT_SELECTIONS)}"
        )
    if select == "drift" and "drift_flag" not in columns:
        raise EvalkitError(
            "the event log has no drift_flag column",
            hint="run the drift job first, or select low_feedback or random events",
        )
    return {
        "low_feedback": "user_feedback < 0",
        "drift": "coalesce(drift_flag, false)",
        "random": "true",
    }[select]


def _with_feedback(con: duckdb.DuckDBPyConnection) -> str:
    """A view of the exchanges of ``events``, each with the worst verdict of the feedback rows
    the server logs apart, keyed by ``response_id`` (or its own, if it has one); its name."""
    con.execute(
        """CREATE VIEW exchanges AS
           SELECT e.* REPLACE (coalesce(f.user_feedback, e.user_feedback) AS user_feedback)
           FROM events e LEFT JOIN (
               SELECT response_id, min(user_feedback) AS user_feedback FROM events
               WHERE type = 'feedback' GROUP BY response_id) f USING (response_id)
           WHERE coalesce(e.type, 'exchange') = 'exchange'"""
    )
    return "exchanges"


def items_from_events(
    events_dir: str | Path,
    selection: Selection | None = None,
    *,
    select: str = "low_feedback",
    since: date | None = None,
    until: date | None = None,
) -> list[Item]:
    """Items from production exchanges in the Parquet event log.

    ``select``: ``low_feedback`` (user_feedback < 0), ``drift`` (drift_flag set) or
    ``random``; ``since``/``until`` bound the ``date=`` partitions read (inclusive).
    """
    selection = selection or Selection()
    files = sorted(Path(events_dir).glob("date=*/*.parquet"))
    if not files:
        raise EvalkitError(
            f"no event files under {events_dir} (expected date=YYYY-MM-DD/*.parquet)",
            hint="start the monitor so it logs events, or pass the workspace that holds them",
        )
    con = duckdb.connect()
    try:
        events_view(con, events_dir)
        columns = {row[0] for row in con.execute("DESCRIBE events").fetchall()}
        missing = [c for c in EVENT_COLUMNS if c not in columns]
        if missing:
            raise EvalkitError(
                f"the event log under {events_dir} lacks column(s) {', '.join(missing)}",
                hint="events need: " + ", ".join(EVENT_COLUMNS),
            )
        if selection.slice_field and selection.slice_field not in columns:
            raise EvalkitError(
                f"no event column {selection.slice_field!r} to slice by",
                hint=f"columns: {', '.join(sorted(columns))}",
            )
        view = _with_feedback(con) if {"type", "response_id"} <= columns else "events"
        where = [_event_filter(select, columns), "response IS NOT NULL"]
        params: list = []
        for bound, op in ((since, ">="), (until, "<=")):
            if bound is not None:
                where.append(f"CAST(date AS DATE) {op} ?")
                params.append(bound)
        rows = con.execute(
            f"SELECT * FROM {view} WHERE {' AND '.join(where)} ORDER BY event_id", params
        )
        names = [d[0] for d in rows.description]
        records = [dict(zip(names, row)) for row in rows.fetchall()]
    finally:
        con.close()

    def slice_of(event: dict) -> str:
        value = event.get(selection.slice_field) if selection.slice_field else None
        return NO_SLICE if value is None else str(value)

    return [
        Item(
            kind=selection.kind,
            prompt=as_messages(e["prompt"]),
            response_a=e["response"],
            source={"event_id": str(e["event_id"]), "date": str(e["date"])},
            source_a=e["model_version"],
            slice=slice_of(e),
            priority=selection.priority,
            overlap=selection.overlap,
        )
        for e in _sample(records, selection, slice_of)
    ]
