"""The event log: one row per exchange seen in production, in Hive-partitioned Parquet.

``WORKSPACE/events/date=YYYY-MM-DD/<process>-<sequence>.parquet``. A background writer flushes
the buffered events when ``max_events`` are waiting or the oldest has waited ``max_age_s``;
each file is written under a temporary name and renamed, so a reader never sees half a file,
and names carry the host, process id and a random part, so any number of servers write side by
side. DuckDB (``read_parquet('events/*/*.parquet', hive_partitioning=true)``), pyarrow and any
engine that reads Hive-partitioned Parquet query the files directly.

**Loss bound.** An event is acknowledged once it is in the buffer. A process killed outright
(SIGKILL, power loss) loses what no renamed file holds yet: the buffer (fewer than
``max_events`` events plus the last request's, none older than ``max_age_s``) and a batch
being written at that instant. With ``wal=True`` each event is first appended to a write-ahead
file and fsync'd before it is acknowledged; the next writer on the same folder replays what
the files lack, so nothing acknowledged is lost. A clean close (SIGTERM, SIGINT) flushes.

Feedback arrives later as its own rows (``type = "feedback"``) keyed by ``response_id``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evalkit.errors import EvalkitError
from evalkit.events import conversations, query

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2 added response_nll; older files read with it null
# The columns of an event; evalkit.rating.sources reads event_id, timestamp, model_version,
# prompt, response and user_feedback of the exchanges.
SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("type", pa.string()),  # exchange | feedback
        ("event_id", pa.string()),
        ("response_id", pa.string()),
        ("conversation_id", pa.string()),
        ("request_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),  # the served name
        ("model_version", pa.string()),  # the model's content hash
        ("chat_template_fingerprint", pa.string()),
        ("prompt", pa.string()),  # JSON of the messages
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("response_nll", pa.float64()),  # mean NLL of the response under the served model
        ("latency_s", pa.float64()),
        ("ttft_s", pa.float64()),
        ("status", pa.int16()),  # the HTTP status the exchange ended with
        ("error", pa.string()),
        ("user_feedback", pa.int8()),  # -1 bad, 0 neutral, 1 good
        ("rating", pa.int8()),  # 1-5
        ("comment", pa.string()),
        ("correction", pa.string()),  # a corrected response
        ("metadata", pa.string()),  # JSON from the client
    ]
)
COLUMNS = tuple(SCHEMA.names)
FIELDS = frozenset(COLUMNS)
TYPES = ("exchange", "feedback")


def new_id(prefix: str) -> str:
    """A unique id: the time in milliseconds, then 80 random bits, 32 hex digits (a UUIDv7's
    layout, at a quarter of a uuid4's cost). The time tells which day's files hold the id."""
    return f"{prefix}-{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def id_day(made_id: str) -> date | None:
    """The UTC day :func:`new_id` made an id on; None where the id cannot hold one. An id made
    elsewhere in the same shape (vLLM's are 32 random hex digits) reads as some day, so a
    lookup by day must fall back to the rest (:func:`holds_response` does)."""
    digits = made_id.rpartition("-")[2]
    if len(digits) != 32:
        return None
    try:
        return datetime.fromtimestamp(int(digits[:12], 16) / 1000, UTC).date()
    except (ValueError, OverflowError, OSError):
        return None


def make_event(**fields) -> dict:
    """An event with its ids and timestamp filled in where not given, every column present."""
    unknown = fields.keys() - FIELDS
    if unknown:
        raise EvalkitError(f"unknown event field {min(unknown)!r}", hint=f"fields: {COLUMNS}")
    event = dict.fromkeys(COLUMNS)
    event.update(fields)
    event["schema_version"] = SCHEMA_VERSION
    for name, fill in FILLS.items():
        event[name] = fill(event[name])
    return event


class BadEvent(EvalkitError):
    """An event of a batch that the log cannot store, named by its index and field."""

    def __init__(self, index: int, field: str | None, problem: str, hint: str = ""):
        if field:  # an unknown field's name may hold a lone surrogate, which UTF-8 cannot
            field = field.encode("utf-8", "backslashreplace").decode()
        self.param = f"events.{index}" + (f".{field}" if field else "")
        super().__init__(f"{self.param}: {problem}", hint=hint)


def events_table(events: list) -> pa.Table:
    """A batch of events as a client sends them (the log's columns, as :func:`make_event`
    takes them) as one table in the log's schema, filled in as ``make_event`` fills one event.

    Built column by column, as the writer needs it; a column is searched for its first bad
    value only when it cannot be stored, so that the :class:`BadEvent` names event and field.
    """
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise BadEvent(index, None, f"an event is an object, not {type(event).__name__}")
    given = set().union(*events)
    if given - FIELDS:
        index, event = next((i, e) for i, e in enumerate(events) if e.keys() - FIELDS)
        name = min(event.keys() - FIELDS)
        raise BadEvent(index, name, f"unknown event field {name!r}", hint=f"fields: {COLUMNS}")
    size = len(events)
    arrays = []
    for name, field in zip(COLUMNS, SCHEMA, strict=True):  # field.name makes a new str each time
        if name == "schema_version":
            arrays.append(pa.repeat(pa.scalar(SCHEMA_VERSION, field.type), size))
        elif name in given or name in FILLS:
            values = [event.get(name) for event in events]
            if name in FILLS:
                values = _filled(values, name)
            arrays.append(_array(values, field))
        else:
            arrays.append(pa.nulls(size, field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _filled(values: list, name: str) -> list:
    fill, filled = FILLS[name], []
    for index, value in enumerate(values):
        try:
            filled.append(fill(value))
        except EvalkitError as exc:
            raise BadEvent(index, name, exc.message, exc.hint) from None
        except (TypeError, ValueError, RecursionError) as exc:  # JSON of the prompt, metadata
            raise BadEvent(index, name, str(exc)) from None
    return filled


ARROW_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


def _array(values: list, field: pa.Field) -> pa.Array:
    """One column; where a value does not fit its type, a BadEvent names the first."""
    try:
        return _exact(values, field.type)
    except ARROW_ERRORS as exc:
        for index, value in enumerate(values):
            try:
                _exact([value], field.type)
            except ARROW_ERRORS as one:
                problem = f"{value!r:.80} cannot be stored as {field.type}: {one}"
                raise BadEvent(index, field.name, problem) from None
        raise EvalkitError(f"the events do not fit the log's column {field.name}: {exc}") from None


def _exact(values: list, column: pa.DataType) -> pa.Array:
    """``pa.array``, refusing what it would change: a fraction for an integer column (pyarrow
    truncates 1.5 to 1) and true/false for a number column (pyarrow stores 1.0 and 0.0). The
    values' types are collected once (in C), so a column of whole numbers is not read twice."""
    integer, floating = pa.types.is_integer(column), pa.types.is_floating(column)
    kinds = set(map(type, values)) if integer or floating else set()
    if integer and float in kinds and any(type(v) is float and not v.is_integer() for v in values):
        raise ValueError("not a whole number")
    if floating and bool in kinds:
        raise TypeError("a number, not true or false, is expected")
    return pa.array(values, type=column)


def _event_type(value) -> str:
    kind = value or "exchange"
    if kind not in TYPES:
        raise EvalkitError(f"event type {kind!r}", hint=" or ".join(TYPES))
    return kind


def _event_time(value) -> datetime:
    """A timestamp as given (ISO 8601 text, seconds since the epoch, a datetime; UTC when it
    names no zone), or now when None."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, str):
        stamp = parse_time(value)
    elif isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int | float):
        try:
            stamp = datetime.fromtimestamp(value, UTC)
        except (ValueError, OverflowError, OSError):
            raise EvalkitError(f"timestamp {value!r} is out of range") from None
    else:
        raise EvalkitError(
            f"timestamp {value!r:.80} is not a time", hint="e.g. 2026-12-07T10:00:00Z"
        )
    try:
        stamp.astimezone(UTC)
    except OverflowError:  # at the ends of the calendar
        raise EvalkitError(f"timestamp {value!r} is out of range") from None
    return stamp


def _as_json(value) -> str | None:
    """The prompt's messages or the metadata as JSON text, as a client may give them."""
    if value is None or isinstance(value, str):
        return value
    return _to_json(value)


_to_json = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps's output, built once


# How make_event and events_table fill in a column where the event leaves it out, and check it.
FILLS = {
    "type": _event_type,
    "event_id": lambda value: value or new_id("ev"),
    "timestamp": _event_time,
    "prompt": _as_json,
    "metadata": _as_json,
}


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time (``Z`` allowed), UTC when it names no zone."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        hint = "e.g. 2026-12-07T10:00:00Z"
        raise EvalkitError(f"timestamp {text!r} is not ISO 8601", hint=hint) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LogConfig:
    """How the log is flushed; the loss bound of a crash is one buffer (see the module doc)."""

    max_events: int = 1000  # flush when this many are waiting
    max_age_s: float = 1.0  # or when the oldest waiting event is this old
    wal: bool = False  # fsync every event to a write-ahead file first: nothing acknowledged lost

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_age_s <= 0:
            raise EvalkitError("the event log needs max_events >= 1 and max_age_s > 0")


class EventLog:
    """Appends events to ``folder`` in the background; ``close()`` flushes what is left.

    >>> log = EventLog(workspace.events_dir); log.append(make_event(prompt="[]")); log.close()
    """

    def __init__(
        self,
        folder: str | Path,
        config: LogConfig | None = None,
        on_lost: Callable[[int], object] | None = None,
    ):
        self.folder = Path(folder)
        self.config = config or LogConfig()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._prefix = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self._buffer: list[dict] = []  # events appended one by one
        self._tables: list[pa.Table] = []  # batches, from events_table
        self._waiting = 0  # events in the two
        self._oldest = 0.0
        self._lock = threading.Condition()
        self._writing = threading.Lock()  # held from taking a batch until it is in Parquet
        self._closed = False
        self.written = 0  # events in Parquet files
        self.lost = 0  # events that could not be written (a full disk), counted, never silent
        self._on_lost = on_lost
        self._wal = None
        if self.config.wal:
            self._replay_wals()
            self._rotate_wal()
        self._thread = threading.Thread(target=self._run, name="evalkit-event-log", daemon=True)
        self._thread.start()

    def append(self, event: dict) -> None:
        """Buffer one event (from :func:`make_event`); with the WAL on, it is on disk on return."""
        self.extend([event])

    def extend(self, events: Iterable[dict] | pa.Table) -> None:
        """Buffer events from :func:`make_event`, or a batch from :func:`events_table` (written
        as it is, with no conversion row by row)."""
        table = events if isinstance(events, pa.Table) else None
        events = [] if table is not None else list(events)
        if self._wal is not None:
            with self._lock:
                for event in events if table is None else table.to_pylist():
                    self._wal.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
                self._wal.flush()
                os.fsync(self._wal.fileno())
        with self._lock:
            if self._closed:
                raise EvalkitError("the event log is closed")
            first = not self._waiting
            if first:
                self._oldest = time.monotonic()
            self._buffer.extend(events)
            if table is not None:
                self._tables.append(table)
            self._waiting += len(events) if table is None else table.num_rows
            if first or self._waiting >= self.config.max_events:
                self._lock.notify()  # the writer sleeps until the oldest is due, or full

    def flush(self) -> None:
        """Write what is buffered now; on return, every event appended before is in Parquet
        (a batch the writer took first included)."""
        with self._writing:
            self._write_batch(*self._take())

    def _take(self) -> tuple[list[dict], list[pa.Table], TextIO | None]:
        """The buffered events and batches, and the write-ahead file that holds them (a new one
        takes over; the old one stays locked until its events are in Parquet)."""
        with self._lock:
            events, tables, waiting = self._buffer, self._tables, self._waiting
            self._buffer, self._tables, self._waiting = [], [], 0
            done = self._rotate_wal() if self._wal is not None and waiting else None
        return events, tables, done

    def _write_batch(self, events: list[dict], tables: list[pa.Table], wal: TextIO | None) -> None:
        self._write(events, tables)
        if wal is not None:
            Path(wal.name).unlink(missing_ok=True)
            wal.close()

    def _rotate_wal(self) -> TextIO | None:
        """Open a new write-ahead file (locked while this writer lives); returns the old one."""
        import fcntl

        old = self._wal
        self._wal_index = getattr(self, "_wal_index", 0) + 1
        path = self.folder / f".wal-{self._prefix}-{self._wal_index:06d}.jsonl"
        self._wal = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed on rotation
        fcntl.flock(self._wal.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return old

    def close(self) -> None:
        """Flush and stop the writer; the write-ahead file goes once its events are written."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify()
        self._thread.join()
        self.flush()
        if self._wal is not None:
            self._wal.close()
            Path(self._wal.name).unlink(missing_ok=True)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._due():
                    wait = self.config.max_age_s - (time.monotonic() - self._oldest)
                    self._lock.wait(timeout=wait if self._waiting else None)
                if self._closed:
                    return
            with self._writing:
                self._write_batch(*self._take())

    def _due(self) -> bool:
        if not self._waiting:
            return False
        old = time.monotonic() - self._oldest >= self.config.max_age_s
        return old or self._waiting >= self.config.max_events

    def _write(self, events: list[dict], tables: list[pa.Table]) -> None:
        """One Parquet file per date partition, each written under a temporary name."""
        if events:
            try:
                tables = [*tables, pa.Table.from_pylist(events, schema=SCHEMA)]
            except ARROW_ERRORS:  # an event the schema cannot hold: counted, not silent
                log.exception("cannot write %d events to %s", len(events), self.folder)
                self._lose(len(events))
        if not tables:
            return
        table = pa.concat_tables(tables)
        days = pc.cast(table["timestamp"], pa.date32())
        unique = pc.unique(days).to_pylist()
        for day in unique:
            rows = table if len(unique) == 1 else table.filter(pc.equal(days, day))
            with self._lock:
                self._sequence += 1
                name = f"{self._prefix}-{self._sequence:06d}.parquet"
            folder = self.folder / f"date={day.isoformat()}"
            try:
                folder.mkdir(exist_ok=True)
                tmp = folder / f".{name}.tmp"
                pq.write_table(rows, tmp)
                os.replace(tmp, folder / name)
                self.written += rows.num_rows
            except Exception:  # a full disk: counted, not silent
                log.exception("cannot write %d events to %s", rows.num_rows, folder)
                self._lose(rows.num_rows)

    def _lose(self, count: int) -> None:
        self.lost += count
        if self._on_lost is not None:
            self._on_lost(count)

    def _replay_wals(self) -> None:
        """Write the events of write-ahead files left by writers that died, then remove them.

        A live writer holds a lock on its file, so only the files of dead ones are read. An
        event may be in a WAL and already in a Parquet file (the writer died between the two);
        events are matched by id, so a replay never writes one twice.
        """
        import fcntl

        wals, events = [], []
        for wal in sorted(self.folder.glob(".wal-*.jsonl")):
            with open(wal, encoding="utf-8") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a live writer's
                    continue
                wals.append(wal)
                lines = f.read().splitlines()
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:  # the last line of a writer killed mid-write
                    continue
                events.append(event | {"timestamp": parse_time(event["timestamp"])})
        known = logged_ids(self.folder, {e["event_id"] for e in events})
        self._write([e for e in events if e["event_id"] not in known], [])
        for wal in wals:
            wal.unlink()


def holds_response(folder: Path, response_id: str) -> bool:
    """Whether the log holds an event with that response id. For an id :func:`new_id` made, the
    files of its day and the next (an exchange is logged when it ends) are read first; the rest
    only when those lack it (an id made elsewhere, or exchanges imported with their own times)."""
    files = sorted(folder.glob("date=*/*.parquet"))
    if day := id_day(response_id):
        days = {f"date={day}", f"date={day + timedelta(days=1)}"}
        near = [f for f in files if f.parent.name in days]
        if _holds(near, response_id):
            return True
        files = [f for f in files if f.parent.name not in days]
    return _holds(files, response_id)


def _holds(files: list[Path], response_id: str) -> bool:
    if not files:
        return False
    import duckdb

    with duckdb.connect() as con:
        con.read_parquet([str(f) for f in files], union_by_name=True).create_view("events")
        found = con.execute("SELECT 1 FROM events WHERE response_id = ? LIMIT 1", [response_id])
        return bool(found.fetchall())


def logged_ids(folder: Path, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` event ids are in the Parquet files of the log."""
    import pyarrow.dataset as ds

    files = sorted(folder.glob("date=*/*.parquet"))
    if not files or not wanted:
        return set()
    table = ds.dataset([str(f) for f in files], format="parquet").to_table(columns=["event_id"])
    return set(table.column("event_id").to_pylist()) & wanted


def summary(folder: str | Path, since: datetime | None = None) -> list[dict]:
    """Exchanges per model, status and feedback, with their latency, since a time."""
    return query(
        folder,
        """SELECT e.model, e.status, count(*) AS exchanges,
                  count(f.response_id) FILTER (WHERE f.user_feedback < 0) AS thumbs_down,
                  count(f.response_id) FILTER (WHERE f.user_feedback > 0) AS thumbs_up,
                  round(quantile_cont(e.latency_s, 0.5), 4) AS p50_latency_s,
                  round(quantile_cont(e.latency_s, 0.99), 4) AS p99_latency_s
           FROM events e
           LEFT JOIN (SELECT response_id, min(user_feedback) AS user_feedback FROM events
                      WHERE type = 'feedback' GROUP BY response_id) f
                  ON f.response_id = e.response_id
           WHERE e.type = 'exchange' AND (? IS NULL OR e.timestamp >= ?)
           GROUP BY ALL ORDER BY e.model, e.status""",
        [since, since],
    )


def recent(folder: str | Path, limit: int = 20, since: datetime | None = None) -> list[dict]:
    """The latest exchanges, newest first."""
    return query(
        folder,
        "SELECT timestamp, model, status, finish_reason, latency_s, prompt, response, event_id "
        "FROM events WHERE type = 'exchange' AND (? IS NULL OR timestamp >= ?) "
        "ORDER BY timestamp DESC LIMIT ?",
        [since, since, limit],
    )


def export_conversations(folder: str | Path, path: str | Path) -> int:
    """Logged exchanges as conversation JSONL (see :func:`evalkit.events.conversations`)."""
    from evalkit.workspace import write_jsonl

    return write_jsonl(conversations(folder), path)
