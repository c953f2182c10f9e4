"""Per-event features that drift is judged on, read from the event log or an events file.

Numeric: ``prompt_tokens``, ``completion_tokens``, ``latency_s``, ``ttft_s``, ``response_nll``
(the served model's own mean negative log-likelihood of its response) and ``refusal`` (1 when
the response matches :data:`REFUSAL_PATTERNS`, else 0). Categorical: ``finish_reason``,
``feedback`` (``up``, ``down`` or ``none``: the exchange's worst thumbs) and ``topic`` (the
topic classifier on the prompt). Semantic: ``prompt_embedding``, the last user turn's sentence
embedding (cached by text hash, so a pass over a long log embeds only what is new).

A column an events file lacks reads as missing; a feature missing in every reference event
cannot be judged and is left out with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evalkit.errors import EvalkitError

NUMERIC = ("prompt_tokens", "completion_tokens", "latency_s", "ttft_s", "response_nll", "refusal")
CATEGORICAL = ("finish_reason", "feedback", "topic")
EMBEDDING = ("prompt_embedding",)
FEATURES = NUMERIC + CATEGORICAL + EMBEDDING
MISSING = ""  # a categorical value the source does not have

# A response that declines: matched case-insensitively at its start (the first 80 characters),
# where assistants put their refusals.
REFUSAL_PATTERNS = (
    r"i(?:'m| am) (?:sorry|afraid)\b",
    r"i (?:can(?:'|no)t|cannot|won't|will not|am unable to|'m unable to) "
    r"(?:help|assist|answer|do|provide|comply)",
    r"as an ai\b",
    r"i(?:'m| am) not able to\b",
)
REFUSAL = "(" + "|".join(REFUSAL_PATTERNS) + ")"
REFUSAL_SQL = REFUSAL.replace("'", "''")  # inside an SQL string literal


@dataclass
class Frame:
    """The features of events in time order: one array per feature, one entry per event;
    a missing value is NaN (numeric) or :data:`MISSING` (categorical)."""

    event_ids: object  # a pyarrow string array
    timestamps: np.ndarray  # int64 microseconds since the epoch, non-decreasing
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # float64, NaN when missing
    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # object
    text_index: np.ndarray | None = None  # each event's row of ``texts``
    texts: list[str] = field(default_factory=list)  # distinct prompt texts

    def __len__(self) -> int:
        return len(self.event_ids)


def _source_sql(columns: set[str]) -> str:
    """The feature columns over the view ``events`` (any subset of the log's columns)."""

    def col(name: str, cast: str) -> str:
        return f"TRY_CAST({name} AS {cast})" if name in columns else f"CAST(NULL AS {cast})"

    prompt = "CAST(prompt AS VARCHAR)" if "prompt" in columns else "''"
    text = (
        f"CASE WHEN json_valid({prompt}) THEN coalesce("
        f"json_extract_string({prompt}, '$[#-1].content'), {prompt}) ELSE {prompt} END"
    )
    response = "CAST(response AS VARCHAR)" if "response" in columns else "NULL"
    refusal = (
        f"CASE WHEN {response} IS NULL THEN NULL WHEN regexp_matches("
        f"lower(left({response}, 80)), '{REFUSAL_SQL}') THEN 1.0 ELSE 0.0 END"
    )
    is_exchange = "coalesce(type, 'exchange') = 'exchange'" if "type" in columns else "true"
    join = ""
    if {"type", "response_id", "user_feedback"} <= columns:  # the log: feedback rows apart
        join = (
            "LEFT JOIN (SELECT response_id AS fid, min(user_feedback) AS fb FROM events "
            "WHERE type = 'feedback' GROUP BY response_id) f ON f.fid = e.response_id"
        )
        feedback = "coalesce(f.fb, e.user_feedback)"
    elif "user_feedback" in columns:
        feedback = col("user_feedback", "INTEGER")
    else:
        feedback = None  # the source cannot tell: missing, not "none"
    feedback_kind = (
        "''"
        if feedback is None
        else (f"CASE WHEN {feedback} > 0 THEN 'up' WHEN {feedback} < 0 THEN 'down' ELSE 'none' END")
    )
    event_id = "CAST(event_id AS VARCHAR)" if "event_id" in columns else "'row-' || _row"
    status = f"AND coalesce({col('status', 'INTEGER')}, 200) < 400" if "status" in columns else ""
    return f"""
        SELECT {event_id} AS event_id,
               epoch_us(CAST(timestamp AS TIMESTAMPTZ)) AS ts,
               {col("model", "VARCHAR")} AS model,
               {col("prompt_tokens", "DOUBLE")} AS prompt_tokens,
               {col("completion_tokens", "DOUBLE")} AS completion_tokens,
               {col("latency_s", "DOUBLE")} AS latency_s,
               {col("ttft_s", "DOUBLE")} AS ttft_s,
               {col("response_nll", "DOUBLE")} AS response_nll,
               {refusal} AS refusal,
               coalesce({col("finish_reason", "VARCHAR")}, '') AS finish_reason,
               {feedback_kind} AS feedback,
               {text} AS text
        FROM events e {join}
        WHERE {is_exchange} {status}"""


def read_frame(
    con, where: str = "true", params: list | None = None, last: int | None = None
) -> Frame:
    """The features of the exchanges in the view ``events`` of ``con`` (DuckDB) that pass
    ``where`` (over the feature columns and ``model``, e.g. ``ts >= ?``), only the ``last`` ones
    if given. Refused and failed requests (a 4xx or 5xx status) are not traffic the model
    answered, and are left out."""
    columns = {row[0] for row in con.execute("DESCRIBE events").fetchall()}
    if "timestamp" not in columns:
        raise EvalkitError("the events have no timestamp column", hint="map one with --map")
    sql = f"SELECT * FROM ({_source_sql(columns)}) WHERE {where}"
    skip = 0
    if last is not None:  # one sort: count, then skip all but the last ones
        total = con.execute(f"SELECT count(*) FROM ({sql})", params or []).fetchall()[0][0]
        skip = max(total - int(last), 0)
    sql += f" ORDER BY ts, event_id OFFSET {skip}"
    table = con.sql(sql, params=params or None).to_arrow_table()
    text = pc.dictionary_encode(table.column("text").fill_null("")).combine_chunks()
    return Frame(
        event_ids=table.column("event_id").combine_chunks(),  # strings made only when needed
        timestamps=table.column("ts").fill_null(0).to_numpy().astype(np.int64),
        numeric={
            n: pc.fill_null(table.column(n).cast(pa.float64()), math.nan)
            .combine_chunks()
            .to_numpy()
            for n in NUMERIC
        },
        categorical={n: _objects(table.column(n)) for n in ("finish_reason", "feedback")},
        text_index=text.indices.to_numpy().astype(np.int64),
        texts=text.dictionary.to_pylist(),
    )


def _objects(column) -> np.ndarray:
    """A string column as an object array that shares one str per distinct value."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    return np.asarray(encoded.dictionary.to_pylist(), dtype=object)[encoded.indices.to_numpy()]


def add_topics(frame: Frame, embed: Callable, topics) -> np.ndarray:
    """Embed the frame's distinct prompt texts (``embed``: texts -> unit vectors), label each
    event's topic with ``topics`` (a TopicModel, or None to leave the topic out); returns the
    embeddings of the distinct texts (row i is ``frame.texts[i]``)."""
    embeddings = embed(frame.texts) if frame.texts else np.zeros((0, 384), np.float32)
    if topics is not None:
        frame.categorical["topic"] = topics.predict(embeddings)[frame.text_index]
    return embeddings


def open_events(source: str | Path, mapping: dict[str, str] | None = None):
    """A DuckDB connection with the view ``events`` over the event log folder, or an events
    file (JSONL, CSV or Parquet, its columns renamed by ``mapping`` as ``monitor import`` does)."""
    import duckdb

    source = Path(source)
    con = duckdb.connect()
    if source.is_dir():
        files = sorted(source.glob("date=*/*.parquet"))
        if not files:
            raise EvalkitError(
                f"no events under {source}", hint="serve a model (`evalkit serve`) or import events"
            )
        rel = con.read_parquet([str(f) for f in files], hive_partitioning=True, union_by_name=True)
        rel.create_view("events")
        return con
    import pyarrow as pa

    from monitor.ingest import read_table

    if not source.exists():
        raise EvalkitError(f"{source} does not exist", hint="give an events file or folder")
    table = read_table(source)
    mapping = mapping or {}
    missing = sorted(set(mapping) - set(table.column_names))
    if missing:
        raise EvalkitError(
            f"{source} has no column {missing[0]!r} to map",
            hint=f"columns: {', '.join(table.column_names)}",
        )
    table = table.rename_columns([mapping.get(c, c) for c in table.column_names])
    table = table.append_column("_row", pa.array(range(1, len(table) + 1), pa.int64()))
    con.register("events_table", table)
    con.execute("CREATE VIEW events AS SELECT * FROM events_table")
    return con


def check_order(con, source) -> None:
    """A backtest replays a file's events in their own order: a file out of timestamp order
    is refused rather than silently reordered, naming the first row out of place."""
    row = con.execute(
        """SELECT _row FROM (SELECT _row, CAST(timestamp AS TIMESTAMPTZ) AS t,
                                    lag(CAST(timestamp AS TIMESTAMPTZ)) OVER (ORDER BY _row) AS p
                             FROM events) WHERE t < p ORDER BY _row LIMIT 1"""
    ).fetchone()
    if row:
        raise EvalkitError(
            f"{source}: row {row[0]} is earlier than the row before it",
            hint="a backtest replays events in the file's order: sort the file by timestamp",
        )
