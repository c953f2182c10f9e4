"""The workspace store: one DuckDB file shared by evaluation runs, the rating queue and releases.

DuckDB lets one process at a time open a file for writing. Every part therefore opens the store
through :func:`connect` (or, in the app, :class:`SharedStore`), keeps the connection short and
writes in short transactions; a lock held by another process is retried with back-off, and if it
persists the error names the file and the process holding it. Within one process, connections
to the same file share one database, so threads may each open their own.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from evalkit.errors import EvalkitError

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCK_TIMEOUT_S = 30.0  # how long to retry a file locked by another process
BUSY_HINT = (
    "wait for that process to finish or stop it, then run the command again; nothing was written"
)


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
    return _unlocked(lambda: duckdb.connect(str(path), read_only=read_only), path, timeout)


def _unlocked(opening: Callable[[], T], path: Path, timeout: float) -> T:
    """``opening()``, retried with back-off while another process holds the file's lock."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    said = False
    while True:
        try:
            return opening()
        except duckdb.Error as exc:
            if not _locked(exc):
                raise EvalkitError(f"cannot open store {path}: {exc}") from exc
            holder = re.search(r"held in (.+?\(PID \d+\))", str(exc))
            if time.monotonic() >= deadline:
                raise StoreBusy(
                    f"store {path} is locked by another process"
                    + (f": {holder.group(1)}" if holder else ""),
                    hint=BUSY_HINT,
                ) from exc
            if not said:
                log.warning(
                    "store %s is locked by another process%s; waiting up to %.0f s for it",
                    path,
                    f" ({holder.group(1)})" if holder else "",
                    timeout,
                )
                said = True
            time.sleep(min(delay * (1 + random.random()), max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 1.0)


class SharedStore:
    """The store of a process that opens it on every request (the app): each block gets a
    connection to one in-memory DuckDB of the process, to which the file is attached while any
    block holds it. Attaching costs a tenth of :func:`connect` (which makes a database each
    time); the file is detached, so free for other processes, as soon as no block holds it."""

    def __init__(self, path: str | Path, timeout: float = LOCK_TIMEOUT_S):
        self.path, self.timeout = Path(path), timeout
        self._db = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._users = 0

    @contextmanager
    def open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection whose tables are the store's; raises StoreBusy as :func:`connect`, after
        ``timeout`` in all (a block waiting for another one's attach included)."""
        deadline = time.monotonic() + self.timeout
        if not self._lock.acquire(timeout=self.timeout):
            raise StoreBusy(f"store {self.path} is still being opened", hint=BUSY_HINT)
        try:
            if not self._users:
                quoted = str(self.path).replace("'", "''")
                attach = f"ATTACH IF NOT EXISTS '{quoted}' AS store"  # a failed detach left it
                _unlocked(lambda: self._db.execute(attach), self.path,
                          max(deadline - time.monotonic(), 0))  # fmt: skip
            self._users += 1
        finally:
            self._lock.release()
        try:
            con = self._db.cursor()
            try:
                con.execute("USE store")
                yield con
            finally:
                con.close()
        finally:
            with self._lock:
                self._users -= 1
                if not self._users:
                    try:
                        self._db.execute("DETACH DATABASE IF EXISTS store")
                    except duckdb.Error:  # a checkpoint that failed: the file stays attached
                        log.exception("cannot detach store %s", self.path)


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
