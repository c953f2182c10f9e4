import subprocess
import sys
import textwrap
import threading
import time

import pytest

from evalkit.errors import EvalkitError
from evalkit.store import SharedStore, StoreBusy, connect, open_store, transaction

HOLD = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    con.execute("CREATE TABLE IF NOT EXISTS t (a INTEGER)")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def _hold(path, seconds):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_transaction_rolls_back_on_error(tmp_path):
    with open_store(tmp_path / "s.duckdb") as con:
        con.execute("CREATE TABLE t (a INTEGER)")
        with pytest.raises(RuntimeError), transaction(con):
            con.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("boom")
        with transaction(con):
            con.execute("INSERT INTO t VALUES (2)")
        assert con.execute("SELECT a FROM t").fetchall() == [(2,)]


def test_lock_held_by_another_process_is_retried(tmp_path):
    path = tmp_path / "s.duckdb"
    proc = _hold(path, 1.0)
    started = time.monotonic()
    con = connect(path, timeout=20)
    assert time.monotonic() - started > 0.3
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
    con.close()
    proc.wait()


def test_persistent_lock_names_file_and_holder(tmp_path):
    path = tmp_path / "s.duckdb"
    proc = _hold(path, 30)
    try:
        with pytest.raises(EvalkitError) as err:
            connect(path, timeout=0.5)
        assert str(path) in str(err.value) and "PID" in str(err.value)
        assert "run the command again" in err.value.hint
    finally:
        proc.kill()
        proc.wait()


def test_read_only_missing_store(tmp_path):
    with pytest.raises(EvalkitError, match="does not exist"):
        connect(tmp_path / "none.duckdb", read_only=True)


def test_waiting_for_a_lock_is_said_at_once(tmp_path, caplog):
    path = tmp_path / "s.duckdb"
    proc = _hold(path, 1.5)
    started = time.time()
    with caplog.at_level("WARNING", logger="evalkit.store"):
        connect(path, timeout=20).close()
    proc.wait()
    [record] = caplog.records
    assert record.created - started < 0.5  # at the first refusal, not after the wait
    message = record.getMessage()
    assert str(path) in message and f"PID {proc.pid}" in message
    assert "waiting up to 20 s" in message


def test_a_shared_store_holds_the_file_only_while_a_block_uses_it(tmp_path):
    path = tmp_path / "s.duckdb"
    shared = SharedStore(path, timeout=0.5)
    with shared.open() as con:
        con.execute("CREATE TABLE t (a INTEGER)")
        with shared.open() as other:  # a second block (another thread of the app) shares it
            other.execute("INSERT INTO t VALUES (1)")
        probe = [sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r})"]
        assert "lock" in subprocess.run(probe, capture_output=True, text=True).stderr
        assert con.execute("SELECT a FROM t").fetchall() == [(1,)]
    proc = _hold(path, 30)  # free again: another process takes it
    try:
        with pytest.raises(StoreBusy) as err, shared.open():
            pass
        assert str(path) in str(err.value) and "PID" in str(err.value)
        # Pages waiting together give up together: none waits for another's whole wait.
        refused, started = [], time.monotonic()

        def page():
            with pytest.raises(StoreBusy), shared.open():
                pass
            refused.append(time.monotonic() - started)

        pages = [threading.Thread(target=page) for _ in range(4)]
        for thread in pages:
            thread.start()
        for thread in pages:
            thread.join()
        assert len(refused) == 4 and max(refused) < 1.5  # 0.5 s each; 2 s if one after another
    finally:
        proc.kill()
        proc.wait()
    with shared.open() as con, transaction(con):
        con.execute("INSERT INTO t VALUES (2)")
    with open_store(path) as con:
        assert con.execute("SELECT a FROM t ORDER BY a").fetchall() == [(1,), (2,)]
