"""Drift at scale: one pass over 1,000,000 logged events, a backtest of 1,000,000 events in
1,000-event windows, and the embedding throughput on this machine's CPU.

The log is real Parquet written by ``monitor.events.EventLog``: prompts drawn from the shipped
corpora (support FAQ, chatterbot topics, chit-chat), token counts from the texts, latencies
from seeded gamma distributions, a drift episode in the second half. Embeddings of the distinct
prompts are computed once (that is the throughput figure) and cached, as the job caches them.

    python benchmarks/bench_drift_scale.py [--events 1000000]

Targets (issue "drift"): the pass in at most 2 s, the backtest in at most 10 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from finetune.data.corpora import labelled_prompts, load_chitchat, load_support_faq, load_topics
from monitor.drift.detector import Detector, DriftConfig, backtest
from monitor.drift.features import FEATURES, open_events
from monitor.drift.job import drift_pass, load_reference, open_featurizer
from monitor.events import SCHEMA

FEATURES_TIMED = tuple(f for f in FEATURES if f not in ("response_nll", "refusal"))  # 8


def write_log(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` exchanges a tenth of a second apart, calm then drifting, in Parquet files."""
    rng = np.random.default_rng(seed)
    calm = [c["messages"][0]["content"] for c in load_support_faq()]
    other = [c["messages"][0]["content"] for c in load_topics()]
    other += [c["messages"][0]["content"] for c in load_chitchat()[:1000]]
    start = datetime(2026, 12, 1, tzinfo=UTC)
    day = folder / "date=2026-12-01"
    day.mkdir(parents=True)
    chunk = 100_000
    for first in range(0, n, chunk):
        size = min(chunk, n - first)
        drifting = np.arange(first, first + size) >= n // 2
        pool_calm = rng.integers(len(calm), size=size)
        pool_other = rng.integers(len(other), size=size)
        texts = [other[o] if d else calm[c] for d, c, o in zip(drifting, pool_calm, pool_other)]
        table = pa.table(
            {
                "schema_version": pa.array([2] * size, pa.int16()),
                "type": ["exchange"] * size,
                "event_id": [f"ev-{i:08d}" for i in range(first, first + size)],
                "timestamp": pa.array(
                    [start + timedelta(seconds=i / 10) for i in range(first, first + size)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "model": ["bench"] * size,
                "prompt": [json.dumps([{"role": "user", "content": t}]) for t in texts],
                "response": ["See the FAQ."] * size,
                "finish_reason": np.where(rng.random(size) < 0.9, "stop", "length").tolist(),
                "prompt_tokens": pa.array([len(t.split()) + 8 for t in texts], pa.int32()),
                "completion_tokens": pa.array(rng.integers(8, 64, size), pa.int32()),
                "latency_s": rng.gamma(4.0, 0.05, size),
                "ttft_s": rng.gamma(2.0, 0.01, size),
                "status": pa.array([200] * size, pa.int16()),
            }
        )
        columns = [
            table.column(f.name) if f.name in table.column_names else pa.nulls(size, f.type)
            for f in SCHEMA
        ]
        pq.write_table(pa.Table.from_arrays(columns, schema=SCHEMA), day / f"part-{first}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_log(tmp / "events", args.events)
        texts, labels = labelled_prompts()
        featurizer, _ = open_featurizer(tmp / "drift", lambda: (texts, labels))
        con = open_events(tmp / "events")
        distinct = [r[0] for r in con.execute(
            "SELECT DISTINCT json_extract_string(prompt, '$[#-1].content') FROM events"
        ).fetchall()]  # fmt: skip
        con.close()
        fresh = [t for t in distinct if t not in set(texts)]
        started = time.perf_counter()
        featurizer.embed(fresh)
        spent = time.perf_counter() - started
        print(f"embedding: {len(fresh)} texts in {spent:.1f} s = {len(fresh) / spent:.0f} texts/s")

        # the reference: the first two hours of calm traffic (72,000 events)
        spec = "log:2026-12-01T00:00..2026-12-01T02:00"
        passes, backtests = [], []
        for _ in range(args.rounds):
            config = DriftConfig(window_events=args.events, features=FEATURES_TIMED)
            reference = load_reference(spec, tmp / "events", featurizer, config)
            started = time.perf_counter()
            result = drift_pass(reference, config, tmp / "events", featurizer)
            passes.append(time.perf_counter() - started)

            config = DriftConfig(window_events=1000, features=FEATURES_TIMED)
            started = time.perf_counter()
            con = open_events(tmp / "events")
            frame, embeddings = featurizer.read(con)
            con.close()
            replayed = backtest(Detector(reference, config, frame, embeddings))
            backtests.append(time.perf_counter() - started)
        drifted = ", ".join(result.window.drifted)
        print(f"pass over {len(result.frame)} events, {len(FEATURES_TIMED)} features: "
              f"median {statistics.median(passes):.2f} s of {args.rounds} (target 2 s); "
              f"drifted: {drifted}")  # fmt: skip
        first = min(a.fired_index for a in replayed.alerts)
        print(f"backtest of {len(frame)} events in {len(replayed.windows)} windows of 1,000: "
              f"median {statistics.median(backtests):.2f} s of {args.rounds} (target 10 s); "
              f"{len(replayed.alerts)} alerts, the first at event {first} "
              f"(onset {args.events // 2})")  # fmt: skip


if __name__ == "__main__":
    main()
