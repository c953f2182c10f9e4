"""The event log's costs: ingest rate, per-request logging and metrics overhead, query time.

- ingest: events/s into Parquet through ``POST /v1/events`` batches (a served micro model),
  through the SDK (``monitor.client.EventClient``) and through ``EventLog`` in process;
- overhead: what logging and metrics add to one request (an event built, appended, the
  counters and histograms updated), the model left out, p50 and p99 over 20,000 requests;
- query: ``monitor.events.summary`` over 1,000,000 logged events.

    .venv/bin/python benchmarks/bench_events.py [--events 200000] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from evalkit.workspace import open_workspace
from finetune.base_model import build_base_model
from monitor.client import EventClient
from monitor.events import EventLog, LogConfig, make_event, summary
from monitor.stack import Background, free_port

PROMPT = [{"role": "user", "content": "How do I install pip on Debian?"}]


def exchange(i: int, **extra) -> dict:
    return {
        "prompt": PROMPT,
        "response": f"Run apt install python3-pip ({i}).",
        "model": "bench",
        "status": 200,
        "latency_s": 0.05 + (i % 100) / 1000,
        "completion_tokens": 12,
        **extra,
    }


def ingest_http(base: str, events: int, batch: int = 1000) -> float:
    started = time.perf_counter()
    for first in range(0, events, batch):
        body = json.dumps({"events": [exchange(first + i) for i in range(batch)]}).encode()
        request = urllib.request.Request(
            f"{base}/v1/events", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60):
            pass
    return events / (time.perf_counter() - started)


def ingest_sdk(base: str, events: int) -> tuple[float, float]:
    client = EventClient(base, max_batch=1000, max_wait_s=0.05, max_queue=events)
    started = time.perf_counter()
    for i in range(events):
        client.log(**exchange(i))
    queued = time.perf_counter() - started
    client.close()
    assert client.sent == events, (client.sent, client.failed, client.dropped)
    return events / (time.perf_counter() - started), queued / events


def ingest_in_process(folder: Path, events: int) -> float:
    log = EventLog(folder, LogConfig(max_events=10_000))
    started = time.perf_counter()
    for i in range(events):
        log.append(make_event(**exchange(i)))
    log.close()
    return events / (time.perf_counter() - started)


def overhead(folder: Path, requests: int) -> tuple[float, float]:
    """Seconds per request of logging and metrics, p50 and p99 (the model left out)."""
    from prometheus_client import CollectorRegistry

    from monitor.metrics import server_metrics

    metrics = server_metrics(CollectorRegistry())
    log = EventLog(folder)
    times = []
    for i in range(requests):
        started = time.perf_counter()
        m = metrics
        m.requests.labels("bench", "200", "stop").inc()
        m.latency.labels("bench").observe(0.05)
        m.time_to_first_token.labels("bench").observe(0.01)
        m.time_per_output_token.labels("bench").observe(0.004)
        m.prompt_tokens.labels("bench").observe(20)
        m.generation_tokens.labels("bench").observe(12)
        m.generated_tokens.labels("bench").inc(12)
        log.append(make_event(**exchange(i), response_id=f"r{i}", ttft_s=0.01))
        m.events_ingested.labels("bench").inc()
        times.append(time.perf_counter() - started)
    log.close()
    return statistics.median(times), statistics.quantiles(times, n=100)[98]


def query(folder: Path, rows: int) -> float:
    log = EventLog(folder, LogConfig(max_events=100_000))
    chunk = [make_event(**exchange(i)) for i in range(10_000)]
    for _ in range(rows // len(chunk)):
        log.extend(chunk)
    log.close()
    summary(folder)  # warm-up: file listing, DuckDB start
    started = time.perf_counter()
    summary(folder)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=str(Path.home() / ".cache" / "evalkit-bench"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rate = ingest_in_process(tmp / "direct", args.events)
        print(f"EventLog in process: {rate:,.0f} events/s", flush=True)
        p50, p99 = overhead(tmp / "overhead", 20_000)
        print(f"logging + metrics per request: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms")
        seconds = query(tmp / "query", args.rows)
        print(f"summary over {args.rows:,} events: {seconds:.2f} s", flush=True)

        model = build_base_model(open_workspace(args.workspace), "micro")
        port = free_port()
        command = [sys.executable, "-m", "evalkit.cli", "--workspace", str(tmp / "ws"), "serve"]
        command += ["--model", str(model), "--port", str(port), "--flush-events", "10000"]
        base = f"http://127.0.0.1:{port}"
        server = Background.start(
            "evalkit serve", command, tmp / "serve.log", f"{base}/healthz", 60
        )
        try:
            rate = ingest_http(base, args.events)
            print(f"POST /v1/events, batches of 1,000: {rate:,.0f} events/s", flush=True)
            rate, queued = ingest_sdk(base, args.events)
            print(f"EventClient: {rate:,.0f} events/s; log() takes {queued * 1e6:.1f} us")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
