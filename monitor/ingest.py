"""Recorded exchanges into the event log: back-fills, and replays of past traffic.

JSONL, CSV or Parquet, read with pyarrow; ``mapping`` renames the file's columns to the log's
(``{"question": "prompt", "answer": "response"}``); timestamps are kept as given (a row without
one is stamped now). Columns the log does not have go into ``metadata``, so nothing is lost.
"""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.errors import EvalkitError
from monitor.events import COLUMNS, EventLog, make_event

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_table(path: Path):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise EvalkitError(f"{path}: unknown format", hint="JSONL, CSV or Parquet")
    readers = {
        "json": pyarrow.json.read_json,
        "csv": pyarrow.csv.read_csv,
        "parquet": pyarrow.parquet.read_table,
    }
    try:
        return readers[kind](path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise EvalkitError(f"cannot read {path}: {exc}") from None


def import_file(path: str | Path, events_dir: str | Path, mapping: dict[str, str]) -> int:
    """Write every row of ``path`` to the log as an exchange; returns how many."""
    path = Path(path)
    table = read_table(path)
    missing = sorted(set(mapping) - set(table.column_names))
    if missing:
        raise EvalkitError(
            f"{path} has no column {missing[0]!r} to map",
            hint=f"columns: {', '.join(table.column_names)}",
        )
    wrong = sorted(set(mapping.values()) - set(COLUMNS))
    if wrong:
        raise EvalkitError(
            f"--map to {wrong[0]!r}: not a column of the log", hint=", ".join(COLUMNS)
        )
    events = []
    for number, row in enumerate(table.to_pylist(), start=1):
        row = {mapping.get(k, k): v for k, v in row.items()}
        extra = {k: row.pop(k) for k in list(row) if k not in COLUMNS}
        if extra:
            metadata = json.loads(row["metadata"]) if row.get("metadata") else {}
            row["metadata"] = metadata | {k: str(v) for k, v in extra.items()}
        if row.get("response") is None or row.get("prompt") is None:
            raise EvalkitError(
                f"{path}: row {number} has no prompt or response",
                hint="map the file's columns with --map SRC=prompt --map SRC=response",
            )
        try:
            events.append(make_event(**row))
        except EvalkitError as exc:
            raise EvalkitError(f"{path}: row {number}: {exc.message}", hint=exc.hint) from None
    log = EventLog(events_dir)
    log.extend(events)
    log.close()
    return len(events)
