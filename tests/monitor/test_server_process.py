"""`evalkit serve` as a process: a graceful stop flushes the log; SIGKILL under load loses at most
the unflushed buffer of acknowledged events, and nothing with --wal."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import duckdb
import pytest

from monitor.stack import Background

BATCH = 25  # events a request sends


def _start(micro_model, workspace, port, *flags) -> subprocess.Popen:
    command = [sys.executable, "-m", "evalkit.cli", "--workspace", str(workspace), "serve"]
    command += ["--model", str(micro_model), "--name", "micro", "--port", str(port), *flags]
    log, ready = workspace / "serve.log", f"http://127.0.0.1:{port}/healthz"
    return Background.start("evalkit serve", command, log, ready, 60).process


def _send(port: int, first: int) -> list[str]:
    """One acknowledged batch of events; returns their responses."""
    responses = [f"event {first + i}" for i in range(BATCH)]
    body = json.dumps({"events": [{"prompt": "[]", "response": r} for r in responses]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    return responses


def _logged(workspace) -> set[str]:
    files = list((workspace / "events").glob("date=*/*.parquet"))
    if not files:
        return set()
    rows = duckdb.connect().execute(
        f"SELECT response FROM read_parquet('{workspace}/events/*/*.parquet')"
    )
    return {r for (r,) in rows.fetchall()}


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("wal", "flush_events"), [(True, 100_000), (False, 60)])
def test_sigkill_loses_at_most_the_unflushed_buffer(
    micro_model, tmp_path, free_port, wal, flush_events
):
    port = free_port()
    flags = ["--flush-events", str(flush_events), "--flush-seconds", "3600"]
    proc = _start(micro_model, tmp_path, port, *flags, *(["--wal"] if wal else []))
    acknowledged = []
    try:
        for n in range(12):
            acknowledged += _send(port, n * BATCH)
        if not wal:  # let a flush in progress end: the bound is the buffer, not a file half-written
            time.sleep(1.0)
    finally:
        _stop(proc, signal.SIGKILL)
    lost = set(acknowledged) - _logged(tmp_path)
    if wal:  # the next start replays the write-ahead log
        port = free_port()
        _stop(_start(micro_model, tmp_path, port, *flags, "--wal"))
        assert set(acknowledged) <= _logged(tmp_path)
    else:  # the bound: what was waiting for the next flush
        assert len(lost) < flush_events + BATCH
        assert len(acknowledged) - len(lost) >= flush_events  # the full buffers were written


def test_a_graceful_stop_flushes_everything(micro_model, tmp_path, free_port):
    port = free_port()
    proc = _start(
        micro_model, tmp_path, port, "--flush-events", "100000", "--flush-seconds", "3600"
    )
    try:
        acknowledged = _send(port, 0) + _send(port, BATCH)
    finally:
        _stop(proc, signal.SIGTERM)
    assert set(acknowledged) <= _logged(tmp_path)
    assert proc.returncode is not None
