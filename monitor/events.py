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
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import pyarrow as pa
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
TYPES = ("exchange", "feedback")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def make_event(**fields) -> dict:
    """An event with its ids and timestamp filled in where not given, every column present."""
    event = dict.fromkeys(COLUMNS)
    unknown = sorted(set(fields) - set(COLUMNS))
    if unknown:
        raise EvalkitError(f"unknown event field {unknown[0]!r}", hint=f"fields: {COLUMNS}")
    event.update(fields)
    event["schema_version"] = SCHEMA_VERSION
    event["type"] = event["type"] or "exchange"
    if event["type"] not in TYPES:
        raise EvalkitError(f"event type {event['type']!r}", hint=" or ".join(TYPES))
    event["event_id"] = event["event_id"] or new_id("ev")
    stamp = event["timestamp"]
    if stamp is None:
        event["timestamp"] = datetime.now(UTC)
    elif isinstance(stamp, str):
        event["timestamp"] = parse_time(stamp)
    elif isinstance(stamp, int | float):
        event["timestamp"] = datetime.fromtimestamp(stamp, UTC)
    for key in ("prompt", "metadata"):
        if event[key] is not None and not isinstance(event[key], str):
            event[key] = json.dumps(event[key], ensure_ascii=False)
    return event


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
        self._buffer: list[dict] = []
        self._oldest = 0.0
        self._lock = threading.Condition()
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

    def extend(self, events: Iterable[dict]) -> None:
        events = list(events)
        if self._wal is not None:
            with self._lock:
                for event in events:
                    self._wal.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
                self._wal.flush()
                os.fsync(self._wal.fileno())
        with self._lock:
            if self._closed:
                raise EvalkitError("the event log is closed")
            first = not self._buffer
            if first:
                self._oldest = time.monotonic()
            self._buffer.extend(events)
            if first or len(self._buffer) >= self.config.max_events:
                self._lock.notify()  # the writer sleeps until the oldest is due, or full

    def flush(self) -> None:
        """Write what is buffered now."""
        self._write_batch(*self._take())

    def _take(self) -> tuple[list[dict], TextIO | None]:
        """The buffered events, and the write-ahead file that holds them (a new one takes over;
        the old one stays locked until its events are in Parquet)."""
        with self._lock:
            batch, self._buffer = self._buffer, []
            done = self._rotate_wal() if self._wal is not None and batch else None
        return batch, done

    def _write_batch(self, batch: list[dict], wal: TextIO | None) -> None:
        self._write(batch)
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
                    self._lock.wait(timeout=wait if self._buffer else None)
                if self._closed:
                    return
            self._write_batch(*self._take())

    def _due(self) -> bool:
        if not self._buffer:
            return False
        old = time.monotonic() - self._oldest >= self.config.max_age_s
        return old or len(self._buffer) >= self.config.max_events

    def _write(self, events: list[dict]) -> None:
        """One Parquet file per date partition, each written under a temporary name."""
        if not events:
            return
        by_date: dict[str, list[dict]] = {}
        for event in events:
            stamp = event["timestamp"]
            if isinstance(stamp, str):
                event = {**event, "timestamp": parse_time(stamp)}
            by_date.setdefault(event["timestamp"].astimezone(UTC).date().isoformat(), []).append(
                event
            )
        for day, rows in by_date.items():
            with self._lock:
                self._sequence += 1
                name = f"{self._prefix}-{self._sequence:06d}.parquet"
            folder = self.folder / f"date={day}"
            try:
                folder.mkdir(exist_ok=True)
                table = pa.Table.from_pylist(rows, schema=SCHEMA)
                tmp = folder / f".{name}.tmp"
                pq.write_table(table, tmp)
                os.replace(tmp, folder / name)
                self.written += len(rows)
            except (
                Exception
            ):  # a full disk, or an event the schema cannot hold: counted, not silent
                log.exception("cannot write %d events to %s", len(rows), folder)
                self.lost += len(rows)
                if self._on_lost is not None:
                    self._on_lost(len(rows))

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
                    events.append(json.loads(line))
                except ValueError:  # the last line of a writer killed mid-write
                    continue
        known = logged_ids(self.folder, {e["event_id"] for e in events})
        self._write([e for e in events if e["event_id"] not in known])
        for wal in wals:
            wal.unlink()


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
