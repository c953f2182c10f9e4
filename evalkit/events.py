"""Reading the event log that the monitor writes (``WORKSPACE/events/date=*/*.parquet``).

The log's columns are a contract (``monitor/events.py`` writes them); every reader goes through
the view here, so the rating queue, data preparation and the monitor's own commands read the
same rows the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.errors import EvalkitError


def query(folder: str | Path, sql: str, params: list | None = None) -> list[dict]:
    """Rows of ``sql`` over the view ``events`` (every Parquet file of the log), as dicts."""
    import duckdb

    files = sorted(Path(folder).glob("date=*/*.parquet"))
    if not files:
        raise EvalkitError(
            f"no events under {folder}", hint="serve a model (`evalkit serve`) or send events"
        )
    con = duckdb.connect()
    try:
        rel = con.read_parquet([str(f) for f in files], hive_partitioning=True, union_by_name=True)
        rel.create_view("events")
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
