"""The event log: whole files only, flushed by size and age, readable by DuckDB and pyarrow,
and nothing acknowledged lost when a writer is killed with the write-ahead log on."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from evalkit.errors import EvalkitError
from evalkit.rating.sources import Selection, items_from_events
from monitor.events import (
    COLUMNS,
    SCHEMA,
    BadEvent,
    EventLog,
    LogConfig,
    events_table,
    holds_response,
    id_day,
    make_event,
    new_id,
)


def _exchange(i: int, **extra) -> dict:
    messages = [{"role": "user", "content": f"question {i}"}]
    return make_event(prompt=messages, response=f"answer {i}", model_version="abc", **extra)


def _files(folder):
    return sorted(folder.glob("date=*/*.parquet"))


def _count(folder) -> int:
    query = f"SELECT count(*) FROM read_parquet('{folder}/*/*.parquet', hive_partitioning=true)"
    return duckdb.connect().execute(query).fetchone()[0]


def test_close_flushes_into_hive_partitions_that_duckdb_and_pyarrow_read(tmp_path):
    log = EventLog(tmp_path, LogConfig(max_events=1000, max_age_s=60))
    log.extend(_exchange(i) for i in range(10))
    log.append(_exchange(10, timestamp="2026-01-02T03:04:05Z"))
    assert _files(tmp_path) == []  # neither full nor old yet
    log.close()
    days = sorted(p.parent.name for p in _files(tmp_path))
    assert days[0] == "date=2026-01-02" and len(days) == 2
    assert _count(tmp_path) == 11
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 11 and set(COLUMNS) <= set(table.column_names)
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(EvalkitError, match="closed"):
        log.append(_exchange(11))


def test_flushed_by_size_and_by_age(tmp_path):
    log = EventLog(tmp_path, LogConfig(max_events=5, max_age_s=0.3))
    log.extend(_exchange(i) for i in range(5))
    deadline = time.time() + 5
    while not _files(tmp_path) and time.time() < deadline:
        time.sleep(0.02)
    assert _count(tmp_path) == 5  # full: written at once
    log.append(_exchange(5))
    time.sleep(0.8)
    assert _count(tmp_path) == 6  # old enough: written without close
    log.close()


def test_writers_side_by_side_never_clash(tmp_path):
    logs = [EventLog(tmp_path, LogConfig(max_events=3)) for _ in range(3)]
    for n, log in enumerate(logs):
        log.extend(_exchange(100 * n + i) for i in range(7))
    for log in logs:
        log.close()
    assert _count(tmp_path) == 21 and len({p.name for p in _files(tmp_path)}) >= 3


def test_the_rating_queue_reads_the_log(tmp_path):
    log = EventLog(tmp_path)
    log.extend(_exchange(i, user_feedback=-1 if i % 2 else 1) for i in range(6))
    log.close()
    items = items_from_events(tmp_path, Selection(), select="low_feedback")
    assert sorted(item.response_a for item in items) == ["answer 1", "answer 3", "answer 5"]


def test_a_bad_event_is_named():
    with pytest.raises(EvalkitError, match="unknown event field 'promt'"):
        make_event(promt="hi")
    with pytest.raises(EvalkitError, match="not ISO 8601"):
        make_event(timestamp="yesterday")
    with pytest.raises(EvalkitError, match="event type"):
        make_event(type="click")
    assert make_event(timestamp=0)["timestamp"] == datetime(1970, 1, 1, tzinfo=UTC)


def test_a_batch_is_the_table_make_event_gives_event_by_event(tmp_path):
    """``events_table`` (the /v1/events path) against the reference: ``make_event`` on each
    event, then pyarrow's own conversion of the rows. Only the ids and times it makes up differ."""
    batch = [
        {
            "prompt": [{"role": "user", "content": "hé"}],
            "response": "a",
            "latency_s": 0.5,
            "prompt_tokens": 7.0,
        },
        {"prompt": "[]", "response": "b", "timestamp": "2026-12-01T10:00:00+01:00"}
        | {"event_id": "e1", "type": "feedback", "metadata": {"k": [1]}, "user_feedback": -1},
        {"event_id": "e2", "timestamp": 0, "completion_tokens": 3, "status": 200, "rating": 5},
    ]
    table = events_table(batch)
    reference = pa.Table.from_pylist([make_event(**e) for e in batch], schema=SCHEMA)
    assert table.schema == reference.schema
    for name in COLUMNS:
        made, expected = table[name].to_pylist(), reference[name].to_pylist()
        if name in ("event_id", "timestamp"):  # the first event has neither: each makes its own
            assert made[1:] == expected[1:], name
        else:
            assert made == expected, name
    assert table["event_id"][0].as_py().startswith("ev-")
    log = EventLog(tmp_path, LogConfig(max_events=1000, max_age_s=60))
    log.append(_exchange(0))
    log.extend(table)  # written as it is, beside the events appended one by one
    log.close()
    assert _count(tmp_path) == 4 and log.written == 4 and log.lost == 0
    assert len({p.parent.name for p in _files(tmp_path)}) == 3  # now, 2026-12-01, 1970-01-01


@pytest.mark.parametrize(
    ("event", "param", "words"),
    [
        ({"promt": "x"}, "events.1.promt", "unknown event field 'promt'"),
        ({"status": "200"}, "events.1.status", "int16"),
        ({"status": 99999}, "events.1.status", "int16"),
        ({"latency_s": [1]}, "events.1.latency_s", "double"),
        ({"latency_s": True}, "events.1.latency_s", "not true or false"),
        ({"prompt_tokens": 1.5}, "events.1.prompt_tokens", "not a whole number"),
        ({"completion_tokens": True}, "events.1.completion_tokens", "bool"),
        ({"completion_tokens": float("nan")}, "events.1.completion_tokens", "whole"),
        ({"timestamp": "yesterday"}, "events.1.timestamp", "not ISO 8601"),
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, "events.1.timestamp", "out of range"),
        ({"timestamp": float("nan")}, "events.1.timestamp", "out of range"),
        ({"timestamp": {}}, "events.1.timestamp", "not a time"),
        ({"response": "\ud800"}, "events.1.response", "surrogates"),
        ({"type": "click"}, "events.1.type", "event type"),
        ("an answer", "events.1", "object"),
    ],
)
def test_a_bad_event_of_a_batch_is_named_by_index_and_field(event, param, words):
    with pytest.raises(BadEvent, match=words) as info:
        events_table([{"response": "fine"}, event, {"status": "also bad, but second"}])
    assert info.value.param == param and info.value.message.startswith(f"{param}: ")


def test_a_response_id_tells_its_day_and_is_looked_up_there_first(tmp_path):
    made = new_id("chatcmpl")
    assert id_day(made) == datetime.now(UTC).date() and len(made) == len("chatcmpl-") + 32
    assert id_day("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT") is None  # one of OpenAI's
    earlier = new_id("x")
    time.sleep(0.002)
    assert earlier < new_id("x")  # the time comes first: ids sort by when they were made
    log = EventLog(tmp_path, LogConfig(max_events=1000, max_age_s=60))
    log.append(_exchange(0, response_id=made))
    log.append(_exchange(1, response_id="resp-elsewhere", timestamp=0))
    vllm = f"chatcmpl-{uuid.uuid4().hex}"  # new_id's shape, but no time in it
    log.append(_exchange(3, response_id=vllm, timestamp="2021-03-04T05:06:07+00:00"))
    backfilled = new_id("chatcmpl")  # made today, but imported with a time of its own
    log.append(_exchange(2, response_id=backfilled, timestamp="2020-05-01T00:00:00+00:00"))
    log.close()
    for response_id in (made, "resp-elsewhere", backfilled, vllm):
        assert holds_response(tmp_path, response_id), response_id
    assert not holds_response(tmp_path, new_id("chatcmpl"))
    assert not holds_response(tmp_path, "chatcmpl-unknown")
    # Today's id is found in today's files alone: an unreadable file of another day is not read.
    (tmp_path / "date=1999-01-01").mkdir()
    (tmp_path / "date=1999-01-01" / "broken.parquet").write_bytes(b"not parquet")
    assert holds_response(tmp_path, made)
    with pytest.raises(duckdb.Error):
        holds_response(tmp_path, "resp-elsewhere")


WRITER = """
import sys, time
from monitor.events import EventLog, LogConfig, make_event
log = EventLog(sys.argv[1], LogConfig(max_events=10**6, max_age_s=3600, wal=sys.argv[2] == "wal"))
for i in range(int(sys.argv[3])):
    log.append(make_event(event_id=f"e{i}", prompt="[]", response=str(i)))
    print(i, flush=True)  # acknowledged
time.sleep(60)
"""


@pytest.mark.parametrize("wal", [True, False])
def test_a_killed_writer_loses_at_most_its_buffer(tmp_path, wal):
    """SIGKILL after every event was acknowledged: with the WAL, the next writer brings every
    one into the log; without it, the unflushed buffer (here all of it) is the loss bound."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), "wal" if wal else "no", "50"],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged = [proc.stdout.readline() for _ in range(50)]
    assert acknowledged[-1].strip() == "49"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    EventLog(tmp_path, LogConfig(wal=True)).close()
    logged = _count(tmp_path) if _files(tmp_path) else 0
    assert logged == (50 if wal else 0)
    assert not list(tmp_path.glob(".wal-*"))
    if wal:  # once only, even when replayed again
        EventLog(tmp_path, LogConfig(wal=True)).close()
        ids = duckdb.connect().execute(f"SELECT event_id FROM '{tmp_path}/*/*.parquet'").fetchall()
        assert sorted(i for (i,) in ids) == sorted(f"e{i}" for i in range(50))


def test_recorded_exchanges_are_imported_with_their_columns_mapped(tmp_path):
    from evalkit.cli import main

    csv = tmp_path / "old.csv"
    csv.write_text(
        "q,a,when,team\nHow do I install pip?,python -m ensurepip,2026-11-30T08:00:00Z,web\n"
        "What is a venv?,An isolated environment.,2026-12-01T09:30:00Z,app\n"
    )
    ws = tmp_path / "ws"
    args = ["--workspace", str(ws), "monitor", "import", str(csv)]
    maps = ["--map", "q=prompt", "--map", "a=response", "--map", "when=timestamp"]
    assert main([*args, *maps]) == 0
    rows = (
        duckdb.connect()
        .execute(
            f"SELECT prompt, response, timestamp, metadata, date FROM "
            f"read_parquet('{ws}/events/*/*.parquet', hive_partitioning=true) ORDER BY timestamp"
        )
        .fetchall()
    )
    assert [r[1] for r in rows] == ["python -m ensurepip", "An isolated environment."]
    assert str(rows[0][4]) == "2026-11-30" and json.loads(rows[1][3]) == {"team": "app"}
    assert main([*args, "--map", "q=promt"]) == 2  # a typo: named, nothing written
    assert main(args) == 2  # no prompt column: named


def test_the_log_exports_conversations_with_feedback(tmp_path):
    from monitor.events import export_conversations

    log = EventLog(tmp_path)
    exchange = _exchange(1, response_id="r1")
    log.append(exchange)
    log.append(make_event(type="feedback", response_id="r1", user_feedback=-1, correction="fixed"))
    log.close()
    out = tmp_path / "conversations.jsonl"
    assert export_conversations(tmp_path, out) == 1
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["messages"][-1] == {"role": "assistant", "content": "fixed"}
    assert record["user_feedback"] == -1 and record["corrected"] is True
