"""Data preparation throughput on the whole embedded default, near-duplicate detection on.

Exports the three embedded corpora (chit-chat, chatterbot topics, support FAQ), runs
``prepare`` over them with the base model's tokenizer (when one is built) and prints records
per second for each stage and end to end, against the target of 60 s on 2 cores.

    .venv/bin/python benchmarks/bench_prepare.py [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from evalkit.workspace import write_jsonl
from finetune.data.corpora import CORPORA
from finetune.data.prepare import PrepareConfig, prepare

TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory whose tokenizer measures tokens")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        for name, load in CORPORA.items():
            path = Path(tmp) / f"{name}.jsonl"
            write_jsonl(load(), path)
            inputs.append(f"{name}={path}")
        config = PrepareConfig(
            model=args.model,
            balance_by="topic",
            max_length=256,
            eval_sets={"support": str(Path(tmp) / "support.jsonl")},
        )
        started = time.perf_counter()
        manifest = prepare(inputs, Path(tmp) / "dataset", config)
        total = time.perf_counter() - started
    print(f"cores: {os.cpu_count()}  records read: {manifest['counts']['read']:,}")
    print(f"{'stage':<14}{'records in':>11}{'seconds':>9}{'records/s':>12}")
    for stage in manifest["stages"]:
        rate = stage["in"] / stage["seconds"] if stage["seconds"] else float("inf")
        print(f"{stage['stage']:<14}{stage['in']:>11,}{stage['seconds']:>9.2f}{rate:>12,.0f}")
    rate = manifest["counts"]["read"] / total
    print(
        f"end to end: {total:.1f} s, {rate:,.0f} records/s; "
        f"target {TARGET_SECONDS:.0f} s -> {TARGET_SECONDS / total:.1f}x under target"
    )


if __name__ == "__main__":
    main()
