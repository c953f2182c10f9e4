"""The Drift page on a log with a drifted window: alerts, traffic, shaded statistics, the
drifted prompts, and sending them to the rating queue."""

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalkit.accounts import Account, NotAllowed
from evalkit.events import flags_dir
from evalkit.store import open_store
from monitor.drift.job import SCHEMA
from monitor.events import EventLog, make_event
from monitor.overview import PROMETHEUS_ENV, drift_selection, send_drifted, traffic

from .conftest import page, rows

START = datetime(2026, 1, 1, 10, tzinfo=UTC)
JUDGED = START + timedelta(minutes=5)
FLAGGED = [f"ev-{i:02d}" for i in range(6, 12)]


@pytest.fixture
def drifted(workspace):
    """Twelve exchanges 30 s apart (the last six flagged by a drifted window), three drift
    windows of latency_s and an alert still firing since the third."""
    log = EventLog(workspace.events_dir)
    log.extend(
        make_event(
            event_id=f"ev-{i:02d}",
            timestamp=START + timedelta(seconds=30 * i),
            model="m",
            model_version="hash-m",
            prompt=[{"role": "user", "content": f"question {i}"}],
            response=f"answer {i}",
            latency_s=0.1 * (i + 1),
            status=500 if i == 0 else 200,
        )
        for i in range(12)
    )
    log.close()
    folder = flags_dir(workspace.events_dir)
    folder.mkdir(parents=True)
    flags = {"event_id": FLAGGED, "feature": ["latency_s"] * 6, "judged_at": [JUDGED] * 6}
    pq.write_table(pa.table(flags), folder / "flags.parquet")
    with open_store(workspace.store_path) as con:
        for statement in SCHEMA:
            con.execute(statement)
        for n in range(3):
            con.execute(
                "INSERT INTO drift_results (model, feature, statistic, window_end, value, "
                "threshold, drifted) VALUES ('m', 'latency_s', 'psi', ?, ?, 0.2, ?)",
                [START + timedelta(minutes=2 * n + 1), 0.1 + 0.1 * n, n == 2],
            )
        con.execute(
            "INSERT INTO drift_alerts (model, feature, started_at, value, threshold) "
            "VALUES ('m', 'latency_s', ?, 0.3, 0.2)",
            [START + timedelta(minutes=5)],
        )
    return workspace


def charts(at) -> list[tuple[dict, dict]]:
    """Each chart's Vega-Lite spec and its datasets (name -> rows)."""
    return [
        (
            json.loads(c.proto.spec),
            {
                d.name: pa.ipc.open_stream(d.data.data).read_all().to_pylist()
                for d in c.proto.datasets
            },
        )
        for c in at.get("vega_lite_chart")
    ]


def test_the_drift_page_shows_alerts_traffic_and_shaded_statistics(drifted):
    at = page("drift", Account("ops", "ops"))
    assert not at.exception and not at.error
    assert "from the store" in at.caption[0].value
    firing = at.dataframe[0].value
    assert list(firing["feature"]) == ["latency_s"] and list(firing["model"]) == ["m"]
    specs = charts(at)
    assert len(specs) == 3  # requests, latency, one drift statistic
    drift, data = specs[2]
    marks = [layer["mark"]["type"] for layer in drift["layer"]]
    assert marks == ["rect", "line", "line"]  # the alert period under the value and threshold
    (period,) = data[drift["layer"][0]["data"]["name"]]
    assert period["start"] == START + timedelta(minutes=5) and period["firing"]
    assert period["end"] == START + timedelta(minutes=5)  # still firing: up to the last window


def test_traffic_counts_requests_errors_and_latency_per_minute(drifted):
    buckets = traffic(drifted.events_dir)
    assert [b["requests"] for b in buckets] == [2] * 6
    assert [b["errors"] for b in buckets] == [1, 0, 0, 0, 0, 0]
    # Two exchanges a minute, latencies 0.1 (i + 1): the median of the first minute is 0.15.
    assert buckets[0]["latency_p50_s"] == pytest.approx(0.15)


def test_the_drifted_sample_goes_to_the_queue_with_its_priority_and_overlap(drifted):
    at = page("drift", Account("eng", "engineer"))
    at.number_input[0].set_value(4).run()
    sample = at.dataframe[1].value
    assert len(sample) == 4 and set(sample["event_id"]) <= set(FLAGGED)
    assert at.caption[-1].value == "4 flagged exchanges, by window"
    at.number_input[1].set_value(7)
    at.number_input[2].set_value(3)
    at.button[0].click().run()
    assert not at.exception and "4 new item(s) queued" in at.success[-1].value
    queued = rows(drifted, "SELECT source, priority, overlap FROM rating_items")
    assert sorted(json.loads(s)["event_id"] for s, _, _ in queued) == sorted(sample["event_id"])
    assert {(p, o) for _, p, o in queued} == {(7, 3)}
    ((who, detail, where),) = rows(
        drifted, "SELECT who, detail, page FROM app_audit WHERE action = 'enqueue'"
    )
    assert (who, where) == ("eng", "drift")
    assert json.loads(detail) | {"new": 4} == {
        "source": "drift", "sample": 4, "seed": 0, "priority": 7, "overlap": 3, "items": 4,
        "new": 4,
    }  # fmt: skip


def test_an_annotator_may_not_send_drifted_prompts(drifted):
    with open_store(drifted.store_path) as con, pytest.raises(NotAllowed, match="may not enqueue"):
        send_drifted(con, Account("ann", "annotator"), drifted.events_dir, drift_selection(5))
    assert rows(drifted, "SELECT count(*) FROM app_audit WHERE action = 'enqueue'") == [(0,)]


def test_a_prometheus_that_does_not_answer_is_a_clear_message(drifted, monkeypatch):
    monkeypatch.setenv(PROMETHEUS_ENV, "http://127.0.0.1:9")
    at = page("drift", Account("ops", "ops"))
    assert "cannot read alerts from Prometheus at http://127.0.0.1:9" in at.error[0].value
    assert not at.exception and len(charts(at)) == 3  # the rest of the page is still drawn


def test_a_log_without_drift_flags_says_so(workspace):
    log = EventLog(workspace.events_dir)
    log.append(make_event(prompt=[{"role": "user", "content": "hi"}], response="hello"))
    log.close()
    at = page("drift", Account("ops", "ops"))
    assert not at.exception and at.info[-1].value.startswith("No drift results yet")
