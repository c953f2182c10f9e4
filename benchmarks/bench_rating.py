"""The rating queue under 16 concurrent annotators, and Bradley-Terry with 1,000 bootstraps.

1. Queue: 16 annotator threads, each with its own connection to one DuckDB file on disk,
   claim an item, "read" it for a random think time (exponential, mean ``--think-ms``; each
   value given is one run), rate it and get the next. Annotators start after a think time too,
   not all in the same millisecond. The figure is what an annotator waits per item: submit +
   claim of the next (the first item: its claim), against the target p99 <= 20 ms; once with
   the two calls ``submit`` and ``claim_next``, once with ``submit_and_claim``, the app's call
   (one transaction). A think time of 0 is the stress case: every thread claims again at once,
   which measures throughput, not what an annotator waits.
   Then a large queue (``--queue-items``): how long it takes to enqueue, and a new process's
   first claim, which reads the whole queue into memory.
2. Ranking: Bradley-Terry over 50,000 comparisons among 10 models with 1,000 prompt
   resamples, against the target of 10 s on 2 cores; the peer is choix's MM fit of the same
   data, once (x 1,000 for a bootstrap done that way).

    .venv/bin/python benchmarks/bench_rating.py [--think-ms 500 ...] [--threads 16]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from summary import emit, size

from evalkit.rating.queue import (
    Item,
    QueueConfig,
    add_annotator,
    add_items,
    claim_next,
    submit,
    submit_and_claim,
)
from evalkit.rating.rubric import Rating, load_rubric
from evalkit.stats.ranking import bradley_terry
from evalkit.store import connect, insert_columns

QUEUE_TARGET_MS = 20.0
RANKING_TARGET_S = 10.0
RATING = Rating(thumbs="up")


def bench_queue(threads: int, per_thread: int, think_ms: float, seed: int, fused: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.duckdb"
        con = connect(path)
        items = [
            Item(
                "single",
                [{"role": "user", "content": f"question {n}"}],
                f"answer {n}",
                {"n": n},
                priority=n % 3,
                overlap=1 + n % 3,
            )
            for n in range(threads * per_thread)
        ]
        add_items(con, items)
        names = [f"annotator-{k:02d}" for k in range(threads)]
        for name in names:
            add_annotator(con, name)
        rubric, config = load_rubric(), QueueConfig(gold_every=0)
        latencies: list[float] = []

        def annotate(k: int) -> None:
            own, name = connect(path), names[k]
            rng = random.Random(seed + k)
            if think_ms:
                time.sleep(rng.expovariate(1000 / think_ms))
            started = time.perf_counter()
            got = claim_next(own, name, config)
            first = time.perf_counter() - started
            for n in range(per_thread):
                if think_ms:
                    time.sleep(rng.expovariate(1000 / think_ms))
                last = n == per_thread - 1
                started = time.perf_counter()
                if fused and not last:
                    _, got = submit_and_claim(own, name, got.item_id, RATING, config, rubric=rubric)
                else:
                    submit(own, name, got.item_id, RATING, rubric=rubric)
                    if not last:
                        got = claim_next(own, name, config)
                latencies.append(time.perf_counter() - started + (first if n == 0 else 0))
            own.close()

        workers = [threading.Thread(target=annotate, args=(k,)) for k in range(threads)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
        con.close()
    ms = np.array(latencies) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    print(
        f"queue ({'submit_and_claim' if fused else 'submit, claim_next'}): {threads} threads x "
        f"{per_thread} items, think {think_ms:.0f} ms: "
        f"{len(ms) / elapsed:,.0f} items/s; claim+submit p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {ms.max():.1f} ms; target p99 {QUEUE_TARGET_MS:.0f} ms -> "
        f"{'met' if p99 <= QUEUE_TARGET_MS else 'missed'} ({QUEUE_TARGET_MS / p99:.2f}x)"
    )


FIRST_CLAIM = """
import sys, time
from evalkit.rating.queue import QueueConfig, claim_next
from evalkit.store import connect
con = connect(sys.argv[1])
started = time.perf_counter()
claim_next(con, "annotator-00", QueueConfig(gold_every=0))
print(time.perf_counter() - started)
"""


def bench_queue_size(n: int) -> None:
    """A large queue: enqueue ``n`` items, rate half of them (1-3 ratings each, written in bulk
    as the history of a store in use), then a new process's first claim, which reads it all."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.duckdb"
        con = connect(path)
        items = [
            Item("single", [{"role": "user", "content": f"q {i}"}], f"a {i}", {"n": i}, overlap=3)
            for i in range(n)
        ]
        started = time.perf_counter()
        add_items(con, items)
        enqueue = time.perf_counter() - started
        day, ttl = datetime(2026, 1, 1), timedelta(minutes=10)
        for k in range(16):
            add_annotator(con, f"annotator-{k:02d}")
        leases = [
            (f"{i}-{k}", item.item_id, f"annotator-{(i + k) % 16:02d}", False, day, day + ttl)
            for i, item in enumerate(items[: n // 2])
            for k in range(1 + i % 3)
        ]
        insert_columns(
            con,
            "rating_leases",
            leases,
            ["VARCHAR", "VARCHAR", "VARCHAR", "BOOLEAN", "TIMESTAMP", "TIMESTAMP"],
            columns="lease_id, item_id, annotator, gold, claimed_at, expires_at",
        )
        con.execute(
            "INSERT INTO ratings SELECT lease_id, lease_id, item_id, annotator, NULL, 'up', NULL,"
            " NULL, NULL, NULL, 1000, '1', 'bench', claimed_at, expires_at FROM rating_leases"
        )
        con.close()
        first = subprocess.run(
            [sys.executable, "-c", FIRST_CLAIM, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
    print(
        f"queue of {n:,} items: enqueue {enqueue:.1f} s; a new process's first claim, which "
        f"reads the queue ({len(leases):,} leases and ratings), {float(first.stdout):.2f} s"
    )


def bench_ranking(n: int, models: int, resamples: int, seed: int) -> None:
    import choix

    rng = np.random.default_rng(seed)
    strength = rng.normal(0, 1, models)
    a = rng.integers(0, models, n)
    b = (a + rng.integers(1, models, n)) % models
    p = 1 / (1 + np.exp(strength[b] - strength[a]))
    u = rng.random(n)
    outcome = np.where(u < 0.9 * p, 1.0, np.where(u > 1 - 0.9 * (1 - p), 0.0, 0.5))
    names = [f"model-{k}" for k in range(models)]
    first, second = [names[k] for k in a], [names[k] for k in b]
    prompts = rng.integers(0, n // 5, n)  # about 5 judgements per prompt
    started = time.perf_counter()
    ranking = bradley_terry(first, second, outcome, prompts, n_resamples=resamples, seed=seed)
    ours = time.perf_counter() - started
    data = []
    for x, y, o in zip(a, b, outcome):  # ties as one win each way, wins doubled
        data += {1.0: [(x, y)] * 2, 0.0: [(y, x)] * 2, 0.5: [(x, y), (y, x)]}[o]
    started = time.perf_counter()
    choix.mm_pairwise(models, data, alpha=0.1)
    peer = time.perf_counter() - started
    widest = max(s.high - s.low for s in ranking.strengths)
    print(
        f"ranking: Bradley-Terry + {resamples:,} prompt resamples over {n:,} comparisons, "
        f"{models} models: {ours:.2f} s (widest 95% CI {widest:.3f}); target "
        f"{RANKING_TARGET_S:.0f} s -> {RANKING_TARGET_S / ours:.1f}x under target"
    )
    print(
        f"peer: choix.mm_pairwise, one fit of the same data: {peer:.2f} s; x {resamples:,} "
        f"resamples = {peer * resamples:,.0f} s -> evalkit {peer * resamples / ours:,.0f}x faster"
    )
    measure = f"Bradley-Terry + {resamples:,} resamples, {n:,} comparisons"
    theirs = f"{peer * resamples:,.0f} s"
    emit(
        "rating",
        measure,
        f"{ours:.2f} s",
        "choix.mm_pairwise x resamples",
        theirs,
        peer * resamples / ours,
        None,
    )


def bench_agreement(items: int, raters: int, resamples: int, seed: int) -> None:
    """Krippendorff's alpha (ordinal) with its bootstrap interval, against the
    ``krippendorff`` package's alpha computed once per resample (timed on 10, scaled)."""
    import krippendorff

    from evalkit.stats.agreement import krippendorff_alpha

    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, items)
    data = np.clip(truth + rng.integers(-1, 2, (raters, items)), 1, 5).astype(float)
    data[rng.random(data.shape) < 0.2] = np.nan  # not every rater rates every item
    started = time.perf_counter()
    ours = krippendorff_alpha(data, "ordinal", n_resamples=resamples, seed=seed)
    ours_s = time.perf_counter() - started
    peer_value = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    started = time.perf_counter()
    for _ in range(10):
        resample = data[:, rng.integers(0, items, items)]
        krippendorff.alpha(reliability_data=resample, level_of_measurement="ordinal")
    peer_s = (time.perf_counter() - started) / 10 * resamples
    print(
        f"agreement: Krippendorff's alpha (ordinal) {ours.value:.6f} "
        f"[{ours.low:.4f}, {ours.high:.4f}], {raters} raters x {items:,} items, "
        f"{resamples:,} resamples: {ours_s:.2f} s; krippendorff.alpha {peer_value:.6f}, "
        f"x {resamples:,} resamples = {peer_s:.1f} s"
    )
    measure = f"Krippendorff's alpha + {resamples:,} resamples, {raters} x {items:,}"
    same = abs(ours.value - peer_value) < 1e-12
    emit(
        "rating",
        measure,
        f"{ours_s:.2f} s",
        "krippendorff.alpha x resamples",
        f"{peer_s:.1f} s",
        peer_s / ours_s,
        same,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument(
        "--per-thread", type=int, default=size(60, 10), help="items each thread rates"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        nargs="+",
        default=[size(500.0, 50.0)],
        help="mean time an item is read",
    )
    parser.add_argument("--comparisons", type=int, default=size(50_000, 5_000))
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=size(1000, 200))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--queue-items", type=int, default=size(100_000, 5_000), help="the large queue's size"
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}  load average: {load:.1f}")
    bench_ranking(args.comparisons, args.models, args.resamples, args.seed)
    bench_agreement(args.comparisons // 10, 5, args.resamples, args.seed)
    bench_queue(1, args.per_thread, 0.0, args.seed, fused=False)  # one annotator alone: the floor
    for think_ms in args.think_ms:
        for fused in (False, True):
            bench_queue(args.threads, args.per_thread, think_ms, args.seed, fused)
    bench_queue(args.threads, args.per_thread // 2, 0.0, args.seed, fused=True)
    bench_queue_size(args.queue_items)


if __name__ == "__main__":
    main()
