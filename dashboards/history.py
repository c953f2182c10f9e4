"""What the Releases and Drift pages read from the store: gate reports and drift results.

Reads only; the tables belong to the gate (``gate_reports``) and the drift job
(``drift_results``, ``drift_alerts``). A table that is not there yet reads as None, so a page
can say which command fills it.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

REPORT_FILES = ("report.md", "report.html", "report.json")


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    query = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
    return con.execute(query, [name]).fetchone()[0] > 0


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def gate_reports(con: duckdb.DuckDBPyConnection) -> list[dict] | None:
    """Every recorded gate report, newest first, with the report files still on disk."""
    if not _table_exists(con, "gate_reports"):
        return None
    reports = _rows(
        con,
        "SELECT report_id, baseline_run, candidate_run, verdict, created_at, path "
        "FROM gate_reports ORDER BY created_at DESC",
    )
    for report in reports:
        folder = Path(report["path"] or "")
        report["files"] = [folder / name for name in REPORT_FILES if (folder / name).is_file()]
    return reports


def drift_history(con: duckdb.DuckDBPyConnection) -> tuple[list[dict], list[dict]] | None:
    """The drift job's windows (oldest first) and alert periods (newest first), or None before
    its first pass."""
    if not _table_exists(con, "drift_results"):
        return None
    results = _rows(
        con,
        "SELECT model, feature, statistic, window_end, value, threshold, p_adjusted, drifted "
        "FROM drift_results ORDER BY window_end",
    )
    alerts = (
        _rows(con, "SELECT * FROM drift_alerts ORDER BY started_at DESC")
        if _table_exists(con, "drift_alerts")
        else []
    )
    return results, alerts
