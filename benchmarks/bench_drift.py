"""Drift statistics: monitor.drift.statistics against Evidently's DataDriftPreset.

The same reference and current frames (``--rows`` each, 200,000 by default) with the same four
columns: latency (numeric, shifted), completion tokens (numeric counts, not shifted), finish
reason (categorical, shifted) and topic (categorical, 18 values, not shifted), written to
Parquet once. Evidently runs in its own virtual environment (``make bench`` builds
``benchmarks/.venv-evidently``) through ``benchmarks/evidently_drift.py``; its time is taken
inside that process around ``report.run`` only, after a warm-up on a small slice. Ours is taken
in this process around the references and the statistics (numeric: PSI, KS, Wasserstein;
categorical: Jensen-Shannon, chi-square, PSI), after a warm-up, on the columns already in memory.
The two alternate for ``--pairs`` pairs; the figures are medians. Evidently's preset computes
normalized Wasserstein for the numeric columns and Jensen-Shannon distance (natural log) for the
categorical ones: both are printed beside ours (ours in base 2, times sqrt(ln 2) to compare).

    .venv/bin/python benchmarks/bench_drift.py [--rows 200000] [--pairs 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from summary import emit, size

from monitor.drift import statistics as st

ROOT = Path(__file__).resolve().parents[1]
EVIDENTLY = ROOT / "benchmarks" / ".venv-evidently" / "bin" / "python"
NUMERIC = ("latency_s", "completion_tokens")
CATEGORICAL = ("finish_reason", "topic")
TOPICS = np.array([f"topic-{i:02d}" for i in range(18)], dtype=object)


def frames(rows: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    finish = np.array(["stop", "length", "error", "content_filter"], dtype=object)

    def frame(latency_scale, finish_p):
        return {
            "latency_s": rng.gamma(2.0, latency_scale, rows),
            "completion_tokens": rng.negative_binomial(4, 0.05, rows).astype(float),
            "finish_reason": rng.choice(finish, rows, p=finish_p),
            "topic": rng.choice(TOPICS, rows),
        }

    return frame(0.40, [0.90, 0.07, 0.02, 0.01]), frame(0.44, [0.84, 0.12, 0.03, 0.01])


def ours(reference: dict, current: dict) -> dict:
    results = {}
    for column in NUMERIC:
        results[column] = st.numeric_drift(st.numeric_reference(reference[column]), current[column])
    for column in CATEGORICAL:
        ref = st.categorical_reference(reference[column])
        results[column] = st.categorical_drift(ref, current[column])
    return results


def evidently(folder: Path) -> dict:
    done = subprocess.run(
        [str(EVIDENTLY), str(ROOT / "benchmarks" / "evidently_drift.py"), "preset", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"Evidently's run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=size(200_000, 20_000), help="rows in each frame"
    )
    parser.add_argument(
        "--pairs", type=int, default=size(5, 2), help="Evidently/ours pairs of runs"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not EVIDENTLY.exists():
        raise SystemExit(f"{EVIDENTLY} is missing: `make bench` builds Evidently's environment")

    reference, current = frames(args.rows, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, frame in (("reference", reference), ("current", current)):
            pq.write_table(pa.table(frame), folder / f"{name}.parquet")
        ours(reference, current)  # warm-up
        theirs_s, ours_s = [], []
        for pair in range(args.pairs):
            theirs = evidently(folder)
            started = time.perf_counter()
            results = ours(reference, current)
            ours_s.append(time.perf_counter() - started)
            theirs_s.append(theirs["seconds"])
            print(f"pair {pair + 1}: Evidently {theirs_s[-1]:.3f} s, ours {ours_s[-1]:.3f} s")

    print(f"\n{args.rows:,} + {args.rows:,} rows x {len(NUMERIC) + len(CATEGORICAL)} columns")
    theirs_median, ours_median = statistics.median(theirs_s), statistics.median(ours_s)
    print(f"Evidently DataDriftPreset: {theirs_median:.3f} s (median of {args.pairs})")
    print(f"monitor.drift.statistics:  {ours_median:.3f} s (median of {args.pairs})")
    print(f"ratio: {theirs_median / ours_median:.1f}x (target: 10x)\n")

    print("| column | Evidently's statistic | Evidently | ours, same statistic | ours, also |")
    print("|---|---|---|---|---|")
    same = []
    for column in NUMERIC + CATEGORICAL:
        method, value = theirs["values"][column]
        d = results[column]
        if column in NUMERIC:
            same.append(f"{d.wasserstein:.10f}")
            also = f"PSI {d.psi:.4f}, KS {d.ks:.4f} (p {d.ks_p:.3g})"
        else:
            same.append(f"{d.jensen_shannon * math.sqrt(math.log(2)):.10f}")
            also = f"JS base 2 {d.jensen_shannon:.4f}, PSI {d.psi:.4f}, chi2 p {d.chi2_p:.3g}"
        print(f"| {column} | {method} | {value:.10f} | {same[-1]} | {also} |")
    emit(
        "drift",
        f"{args.rows:,} + {args.rows:,} rows, 4 columns",
        f"{ours_median:.3f} s",
        "Evidently DataDriftPreset",
        f"{theirs_median:.3f} s",
        theirs_median / ours_median,
        all(
            abs(float(s) - theirs["values"][c][1]) <= 1e-6
            for s, c in zip(same, NUMERIC + CATEGORICAL)
        ),
    )


if __name__ == "__main__":
    main()
