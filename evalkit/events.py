"""Reading the event log that the monitor writes (``WORKSPACE/events/date=*/*.parquet``).

The log's columns are a contract (``monitor/events.py`` writes them); every reader goes through
the view here, so the rating queue, data preparation and the monitor's own commands read the
same rows the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.errors import EvalkitError


def flags_dir(folder: str | Path) -> Path:
    """Where the drift job flags events of drifted windows (Parquet: event_id, feature,
    judged_at), beside the log: ``WORKSPACE/drift/flags`` for ``WORKSPACE/events``."""
    return Path(folder).parent / "drift" / "flags"


def events_view(con, folder: str | Path) -> None:
    """Create the view ``events`` on ``con`` over every Parquet file of the log, with
    ``drift_flag`` (true when the drift job flagged the event) where flags exist."""
    files = sorted(Path(folder).glob("date=*/*.parquet"))
    if not files:
        raise EvalkitError(
            f"no events under {folder}", hint="serve a model (`evalkit serve`) or send events"
        )
    rel = con.read_parquet([str(f) for f in files], hive_partitioning=True, union_by_name=True)
    flags = sorted(flags_dir(folder).glob("*.parquet"))
    if not flags:
        rel.create_view("events")
        return
    rel.create_view("logged")
    con.read_parquet([str(f) for f in flags]).create_view("flags")
    flagged = "f.event_id IS NOT NULL"
    if "drift_flag" in rel.columns:  # the log carries its own flags too
        select = f"l.* REPLACE (coalesce(l.drift_flag, false) OR {flagged} AS drift_flag)"
    else:
        select = f"l.*, {flagged} AS drift_flag"
    con.execute(
        f"""CREATE VIEW events AS SELECT {select} FROM logged l
            LEFT JOIN (SELECT DISTINCT event_id FROM flags) f ON f.event_id = l.event_id"""
    )


def query(folder: str | Path, sql: str, params: list | None = None) -> list[dict]:
    """Rows of ``sql`` over the view ``events`` (see :func:`events_view`), as dicts."""
    import duckdb

    con = duckdb.connect()
    try:
        events_view(con, folder)
        rows = con.execute(sql, params or [])
        names = [d[0] for d in rows.description]
        return [dict(zip(names, row)) for row in rows.fetchall()]
    finally:
        con.close()


def conversations(folder: str | Path) -> list[dict]:
    """Logged exchanges as conversations (the messages format), ids and feedback in the
    metadata, a correction replacing the response: what data preparation reads."""
    rows = query(
        folder,
        """SELECT e.event_id, e.response_id, e.model, e.prompt, e.response,
                  f.user_feedback, f.correction
           FROM events e
           LEFT JOIN (SELECT response_id, min(user_feedback) AS user_feedback,
                             max(correction) AS correction
                      FROM events WHERE type = 'feedback' GROUP BY response_id) f
                  ON f.response_id = e.response_id
           WHERE e.type = 'exchange' AND e.response IS NOT NULL ORDER BY e.timestamp""",
    )

    def conversation(row: dict) -> dict:
        try:
            messages = json.loads(row["prompt"])
        except (TypeError, ValueError):
            messages = None
        if not isinstance(messages, list):  # a plain prompt: one user turn
            messages = [{"role": "user", "content": row["prompt"] or ""}]
        answer = row["correction"] or row["response"]
        return {
            "messages": [*messages, {"role": "assistant", "content": answer}],
            "event_id": row["event_id"],
            "response_id": row["response_id"],
            "model": row["model"],
            "user_feedback": row["user_feedback"],
            "corrected": row["correction"] is not None,
        }

    return [conversation(row) for row in rows]
