"""The alerts firing now: from Prometheus's HTTP API when one is configured (every rule of
``monitor/rules``), otherwise the drift alerts the drift job keeps in the store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from evalkit.errors import EvalkitError


def from_prometheus(url: str) -> list[dict]:
    """Firing alerts of a Prometheus (``/api/v1/alerts``), pending ones left out."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/alerts", timeout=10) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EvalkitError(
            f"cannot read alerts from Prometheus at {url}: {exc}",
            hint="check --prometheus, or leave it out to read the drift alerts in the store",
        ) from None
    return [
        {
            "alert": a["labels"].get("alertname"),
            "severity": a["labels"].get("severity", ""),
            "since": a.get("activeAt"),
            "summary": a.get("annotations", {}).get("summary", ""),
        }
        for a in body.get("data", {}).get("alerts", [])
        if a.get("state") == "firing"
    ]


def from_store(store: Path) -> list[dict]:
    """Drift alerts still open in the store (``drift_alerts``, written by the drift job)."""
    from evalkit.store import open_store

    if not Path(store).is_file():
        return []
    with open_store(store, read_only=True) as con:
        return open_alerts(con)


def open_alerts(con) -> list[dict]:
    """:func:`from_store` on a connection to the store already open (the app's)."""
    known = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "drift_alerts" not in known:
        return []
    rows = con.execute(
        """SELECT model, feature, started_at, value, threshold FROM drift_alerts
           WHERE ended_at IS NULL ORDER BY started_at"""
    ).fetchall()
    return [
        {
            "alert": "EvalkitDriftDetected",  # as the Prometheus rule names it
            "model": model,
            "feature": feature,
            "since": started.isoformat(),
            "summary": f"{feature} drifted: {value:.3g} >= {threshold:.3g}",
        }
        for model, feature, started, value, threshold in rows
    ]


def firing(prometheus: str | None, store: Path | None) -> list[dict]:
    return from_prometheus(prometheus) if prometheus else from_store(store)
