import json
from datetime import date

import duckdb
import pytest

from evalkit.errors import EvalkitError
from evalkit.rating.queue import add_items
from evalkit.rating.sources import (
    Selection,
    as_messages,
    items_from_comparison,
    items_from_events,
    items_from_run,
)
from evalkit.results import ExampleResult, add_results, create_run, finish_run
from evalkit.store import connect


def _run(con, name, answers, *, finish=True):
    run_id = create_run(con, name=name)
    add_results(
        con,
        run_id,
        [
            ExampleResult(
                "chat",
                f"ex{n}",
                {"length": 1.0},
                {"topic": "billing" if n % 2 else "network"},
                prompt=json.dumps([{"role": "user", "content": f"question {n}"}]),
                output=answer,
            )
            for n, answer in enumerate(answers)
        ]
        + [ExampleResult("ppl", "p0", {"nll": 1.0}, prompt="scored text")],  # no output
    )
    if finish:
        finish_run(con, run_id, summary={})
    return run_id


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    yield con
    con.close()


def test_items_from_a_run_keep_prompt_answer_and_lineage(con):
    run_id = _run(con, "base", [f"answer {n}" for n in range(6)])
    items = items_from_run(con, "base", Selection(kind="correction", overlap=2, priority=3))
    assert len(items) == 6  # the perplexity example has no output
    first = items[0]
    assert first.prompt == [{"role": "user", "content": "question 0"}]
    assert first.response_a == "answer 0" and first.kind == "correction"
    assert first.source == {"run": run_id, "task": "chat", "example_id": "ex0"}
    assert (first.overlap, first.priority, first.source_a) == (2, 3, run_id)


def test_sampling_per_slice_is_seeded(con):
    _run(con, "base", [f"answer {n}" for n in range(20)])
    pick = Selection(slice_field="topic", per_slice=3, seed=1)
    items = items_from_run(con, "base", pick)
    assert sorted(i.slice for i in items) == ["billing"] * 3 + ["network"] * 3
    assert items == items_from_run(con, "base", pick)
    other = items_from_run(con, "base", Selection(slice_field="topic", per_slice=3, seed=2))
    assert {i.item_id for i in other} != {i.item_id for i in items}


def test_an_unfinished_run_is_refused(con):
    _run(con, "half", ["a"], finish=False)
    with pytest.raises(EvalkitError, match="not complete"):
        items_from_run(con, "half")


def test_comparison_pairs_join_on_example_and_randomize_the_order(con):
    base = _run(con, "base", [f"base {n}" for n in range(40)])
    cand = _run(con, "cand", [f"cand {n}" for n in range(40)])
    items = items_from_comparison(con, "base", "cand", Selection(seed=5))
    assert len(items) == 40 and all(i.kind == "pair" for i in items)
    for item in items:
        n = item.source["example_id"][2:]
        shown = {item.source_a: item.response_a, item.source_b: item.response_b}
        assert shown == {base: f"base {n}", cand: f"cand {n}"}
    a_is_base = [i.source_a == base for i in items]
    assert 10 < sum(a_is_base) < 30  # both orders occur
    again = items_from_comparison(con, "base", "cand", Selection(seed=5))
    assert [i.source_a for i in again] == [i.source_a for i in items]
    assert add_items(con, items) == 40 and add_items(con, again) == 0


def _write_events(folder, day, rows, *, drift=True):
    part = folder / f"date={day}"
    part.mkdir(parents=True)
    con = duckdb.connect()
    drift_column = ", drift_flag::BOOLEAN AS drift_flag" if drift else ""
    con.execute(
        "CREATE TABLE e AS SELECT event_id, timestamp::TIMESTAMP AS timestamp, model_version, "
        f"prompt, response, user_feedback::INTEGER AS user_feedback{drift_column} "
        "FROM (VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows)) + ") "
        "t(event_id, timestamp, model_version, prompt, response, user_feedback, drift_flag)",
        [v for row in rows for v in row],
    )
    con.execute(f"COPY e TO '{part / 'part-0.parquet'}' (FORMAT parquet)")
    con.close()


def test_events_select_low_feedback_drift_or_random(tmp_path):
    events = tmp_path / "events"
    chat = json.dumps([{"role": "user", "content": "hi"}])
    _write_events(events, "2026-11-20", [
        ("e1", "2026-11-20 10:00:00", "v1", chat, "hello", -1, False),
        ("e2", "2026-11-20 11:00:00", "v1", "plain question", "answer", None, True),
    ])  # fmt: skip
    _write_events(events, "2026-11-21", [
        ("e3", "2026-11-21 09:00:00", "v2", chat, "hey", 1, False),
        ("e4", "2026-11-21 09:30:00", "v2", chat, "go away", -1, True),
    ])  # fmt: skip
    low = items_from_events(events, select="low_feedback")
    assert [i.source["event_id"] for i in low] == ["e1", "e4"]
    assert low[0].prompt == [{"role": "user", "content": "hi"}] and low[0].source_a == "v1"
    drift = items_from_events(events, select="drift")
    assert [i.source["event_id"] for i in drift] == ["e2", "e4"]
    assert drift[0].prompt == [{"role": "user", "content": "plain question"}]
    assert len(items_from_events(events, select="random")) == 4
    one_day = items_from_events(events, select="random", since=date(2026, 11, 21))
    assert [i.source["event_id"] for i in one_day] == ["e3", "e4"]
    sample = items_from_events(events, Selection(per_slice=1, slice_field="model_version"),
                               select="random")  # fmt: skip
    assert sorted(i.source_a for i in sample) == ["v1", "v2"]


def test_events_without_drift_column_or_files_explain_what_to_do(tmp_path):
    events = tmp_path / "events"
    with pytest.raises(EvalkitError, match="no event files"):
        items_from_events(events)
    _write_events(events, "2026-11-20", [("e1", "2026-11-20", "v1", "q", "a", -1, None)],
                  drift=False)  # fmt: skip
    with pytest.raises(EvalkitError, match="no drift_flag column"):
        items_from_events(events, select="drift")
    with pytest.raises(EvalkitError, match="unknown event selection"):
        items_from_events(events, select="worst")


@pytest.mark.parametrize(
    ("stored", "messages"),
    [
        ('[{"role": "user", "content": "hi"}]', [{"role": "user", "content": "hi"}]),
        ('{"messages": [{"role": "user", "content": "x", "name": "n"}]}',
         [{"role": "user", "content": "x"}]),
        ("just text", [{"role": "user", "content": "just text"}]),
        ('["not", "messages"]', [{"role": "user", "content": '["not", "messages"]'}]),
    ],
)  # fmt: skip
def test_as_messages(stored, messages):
    assert as_messages(stored) == messages


def test_feedback_logged_apart_counts_for_its_exchange(tmp_path):
    """The server logs feedback as its own rows keyed by response_id: a thumbs down there makes
    its exchange low-rated, and the feedback row itself is no item."""
    from monitor.events import EventLog, make_event

    chat = json.dumps([{"role": "user", "content": "hi"}])
    log = EventLog(tmp_path / "events")
    for n, answer in enumerate(["hello", "go away", "hey"]):
        log.append(
            make_event(response_id=f"r{n}", model_version="v1", prompt=chat, response=answer)
        )
    log.append(make_event(type="feedback", response_id="r1", user_feedback=-1))
    log.append(make_event(type="feedback", response_id="r2", user_feedback=1))
    log.close()
    low = items_from_events(tmp_path / "events", select="low_feedback")
    assert [i.response_a for i in low] == ["go away"]
    assert len(items_from_events(tmp_path / "events", select="random")) == 3
