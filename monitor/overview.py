"""What the Drift page shows: traffic and latency over time, the alert periods, the alerts
firing now, and a sample of the drifted prompts with the action that queues it for rating.

The page draws what these functions return; the sample shown and the sample queued are the same
seeded draw (:func:`drift_selection`), so what a person looked at is what gets rated.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import duckdb

from evalkit.accounts import Account
from evalkit.events import flags_dir, query
from evalkit.rating.annotate import enqueue
from evalkit.rating.sources import Selection, items_from_events
from monitor.alerts import from_prometheus, open_alerts

# Prometheus's URL, when the team runs one (`evalkit app --prometheus URL` sets it); without it
# the firing alerts are the drift alerts open in the store.
PROMETHEUS_ENV = "EVALKIT_PROMETHEUS_URL"


def traffic(events_dir: str | Path, bucket_s: int = 60) -> list[dict]:
    """Per ``bucket_s`` seconds: exchanges, failed ones (HTTP status 4xx/5xx) and the latency's
    median and 95th percentile, oldest first."""
    return query(
        events_dir,
        """SELECT to_timestamp(floor(epoch(timestamp) / ?) * ?) AS time,
                  count(*) AS requests,
                  count(*) FILTER (WHERE coalesce(status, 200) >= 400) AS errors,
                  quantile_cont(latency_s, 0.5) AS latency_p50_s,
                  quantile_cont(latency_s, 0.95) AS latency_p95_s
           FROM events WHERE coalesce(type, 'exchange') = 'exchange'
           GROUP BY 1 ORDER BY 1""",
        [bucket_s, bucket_s],
    )


def alert_periods(alerts: list[dict], until: datetime) -> list[dict]:
    """Each drift alert as a period to shade: (model, feature, start, end); one still firing
    ends at ``until`` (the last window judged)."""
    return [
        {
            "model": a["model"],
            "feature": a["feature"],
            "start": a["started_at"],
            "end": a["ended_at"] or until,
            "firing": a["ended_at"] is None,
        }
        for a in alerts
    ]


def firing_alerts(
    con: duckdb.DuckDBPyConnection, prometheus: str | None = None
) -> tuple[str, list[dict]]:
    """The alerts firing now and where they come from: Prometheus's API when ``prometheus``
    (default: ``$EVALKIT_PROMETHEUS_URL``) is set, else the drift alerts open in the store
    (``con``)."""
    url = prometheus or os.environ.get(PROMETHEUS_ENV) or None
    if url:
        return f"Prometheus at {url}", from_prometheus(url)
    return "the store", open_alerts(con)


def drift_selection(size: int, seed: int = 0, *, priority: int = 0, overlap: int = 1) -> Selection:
    """The seeded sample of ``size`` drifted events, queued with ``priority`` and ``overlap``."""
    return Selection(per_slice=size, seed=seed, priority=priority, overlap=overlap)


def _windows(events_dir: Path) -> dict[str, datetime]:
    """Each flagged event's drifted window: the last pass that flagged it."""
    files = sorted(flags_dir(events_dir).glob("*.parquet"))
    if not files:
        return {}
    con = duckdb.connect()
    try:
        rows = con.read_parquet([str(f) for f in files]).aggregate(
            "event_id, max(judged_at)", "event_id"
        )
        return dict(rows.fetchall())
    finally:
        con.close()


def topics_of(drift_dir: Path, texts: list[str]) -> list[str] | None:
    """The topic of each text by the drift job's classifier (``drift_dir/topics.npz``, over
    its cached embeddings), or None when the job has not trained one."""
    if not (Path(drift_dir) / "topics.npz").is_file() or not texts:
        return None
    from monitor.drift.job import open_featurizer

    featurizer, _ = open_featurizer(drift_dir)
    return [str(t) for t in featurizer.topics.predict(featurizer.embed(texts))]


def drifted_sample(events_dir: Path, drift_dir: Path, selection: Selection) -> list[dict]:
    """The sample of flagged events ``selection`` draws, each with its drifted window and its
    topic (None without a topic classifier), grouped by topic then window."""
    items = items_from_events(events_dir, selection, select="drift")
    windows = _windows(events_dir)
    texts = [item.prompt[-1]["content"] for item in items]
    topics = topics_of(drift_dir, texts) or [None] * len(items)
    rows = [
        {
            "topic": topic,
            "window": windows.get(item.source["event_id"]),
            "prompt": text,
            "response": item.response_a,
            "event_id": item.source["event_id"],
        }
        for item, text, topic in zip(items, texts, topics)
    ]
    return sorted(rows, key=lambda r: (r["topic"] or "", str(r["window"]), r["event_id"]))


def send_drifted(
    con: duckdb.DuckDBPyConnection,
    account: Account,
    events_dir: Path,
    selection: Selection,
    *,
    page: str | None = None,
) -> int:
    """Queue the sample of drifted events for rating (the ``enqueue`` permission; audited);
    returns how many items were new."""
    items = items_from_events(events_dir, selection, select="drift")
    detail = {
        "source": "drift",
        "sample": selection.per_slice,
        "seed": selection.seed,
        "priority": selection.priority,
        "overlap": selection.overlap,
    }
    return enqueue(con, account, items, detail, page=page)
