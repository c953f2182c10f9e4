"""The workspace store: one DuckDB file shared by evaluation runs, the rating queue and releases.

DuckDB lets one process at a time open a file for writing. Every part therefore opens the store
through :func:`connect`, keeps the connection short and writes in short transactions; a lock held
by another process is retried with back-off, and if it persists the error names the file and the
process holding it. Within one process, connections to the same file share one database, so
threads may each open their own.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from evalkit.errors import EvalkitError

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 30.0  # how long to retry a file locked by another process


class StoreBusy(EvalkitError):
    """The store stayed locked by another process: nothing was written, try again later."""


def _locked(exc: Exception) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def connect(
    path: str | Path, *, read_only: bool = False, timeout: float = LOCK_TIMEOUT_S
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file at ``path``, retrying with back-off while another process locks it.

    The first refusal is reported at once (a warning: on stderr unless logging says otherwise)
    with the file, the process holding it where DuckDB names it, and how long it will wait.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise EvalkitError(
            f"store {path} does not exist",
            hint="run an evaluation first, or pass the workspace that holds it (--workspace)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    delay = 0.05
    said = False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            if not _locked(exc):
                raise EvalkitError(f"cannot open store {path}: {exc}") from exc
            holder = re.search(r"held in (.+?\(PID \d+\))", str(exc))
            if time.monotonic() >= deadline:
                raise StoreBusy(
                    f"store {path} is locked by another process"
                    + (f": {holder.group(1)}" if holder else ""),
                    hint="wait for that process to finish or stop it, then run the command again;"
                    " nothing was written",
                ) from exc
            if not said:
                log.warning(
                    "store %s is locked by another process%s; waiting up to %.0f s for it",
                    path,
                    f" ({holder.group(1)})" if holder else "",
                    timeout,
                )
                said = True
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block in one transaction: all of it is written, or none of it."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def insert_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows: list[tuple],
    types: list[str],
    *,
    columns: str | None = None,
) -> None:
    """Insert many rows as one statement of column lists (executemany is row by row).

    ``types`` are the SQL types of the row's fields; ``columns`` names the table's columns they
    go to, when not all of them in order.
    """
    if not rows:
        return
    lists = [list(c) for c in zip(*rows)]
    select = ", ".join(f"unnest(?::{t}[])" for t in types)
    con.execute(f"INSERT INTO {table} {f'({columns}) ' if columns else ''}SELECT {select}", lists)


@contextmanager
def open_store(
    path: str | Path, *, read_only: bool = False, timeout: float = LOCK_TIMEOUT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection, closed when the block ends."""
    con = connect(path, read_only=read_only, timeout=timeout)
    try:
        yield con
    finally:
        con.close()
