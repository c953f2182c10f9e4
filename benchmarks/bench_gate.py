"""compare + gate over 10,000 examples with 2,000 bootstrap resamples (target: at most 3 s).

Two runs of one suite are written into a fresh store the way `evalkit eval` writes them: a
perplexity task and a generation task with BLEU, chrF and TER (sacrebleu's sufficient
statistics of real support-FAQ and chit-chat sentences), their content controls, exact match,
length and the degeneration flags. The timed part is what `evalkit gate` does: read both runs,
compare every metric with the shared paired bootstrap, judge the rules, pick the worst
examples, and write report.md, report.html and report.json.

    python benchmarks/bench_gate.py [--examples 10000] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from evalkit.gate import load_spec, run_gate, write_reports
from evalkit.metrics import REFERENCE_METRICS
from evalkit.results import ExampleResult, add_results, create_run, finish_run
from evalkit.store import open_store
from evalkit.tasks import score_generations
from finetune.data.corpora import load_chitchat

SUITE = {
    "name": "bench",
    "tasks": [
        {"type": "perplexity", "dataset": "d"},
        {"type": "generation", "dataset": "d"},
    ],
}
SPEC = """
n_resamples = {resamples}
[[rules]]
metric = "perplexity"
max_relative_increase = 0.02
[[rules]]
metric = "bleu"
max_drop = 1.0
[[rules]]
metric = "chrf_margin"
max_drop = 1.0
[[rules]]
metric = "repetitive"
max_increase = 0.02
"""


def sentences(n: int) -> list[str]:
    out = []
    for conversation in load_chitchat():
        out += [m["content"] for m in conversation["messages"] if len(m["content"].split()) > 3]
        if len(out) >= 2 * n:
            return out[: 2 * n]
    raise SystemExit("not enough sentences")


def write_run(con, name: str, refs: list[str], hyps: list[str], rng) -> str:
    run_id = create_run(con, name=name, suite_name="bench", suite_hash="h", suite=SUITE,
                        model_hash=name, chat_template_fingerprint="t")  # fmt: skip
    tokens = rng.integers(10, 60, size=len(refs))
    nll = tokens * rng.normal(3.0, 0.3, size=len(refs))
    scores = [
        {"nll": float(a), "tokens": float(t), "words": float(t) * 0.8, "bytes": float(t) * 4}
        for a, t in zip(nll, tokens)
    ]
    results = [ExampleResult("perplexity:d", str(i), s) for i, s in enumerate(scores)]
    metrics = [*REFERENCE_METRICS, "exact_match", "length"]
    generation = score_generations(hyps, ["stop"] * len(hyps), refs, metrics, seed=0)
    results += [
        ExampleResult("generation:d", str(i), s, {"topic": f"t{i % 7}"}, "[]", r, h)
        for i, (s, r, h) in enumerate(zip(generation, refs, hyps))
    ]
    add_results(con, run_id, results)
    finish_run(con, run_id, summary={})
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    text = sentences(args.examples)
    refs, hyps = text[: args.examples], text[args.examples :]
    worse = [" ".join(h.split()[:-1]) for h in hyps]  # the candidate drops a word
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "evalkit.duckdb"
        (Path(tmp) / "gate.toml").write_text(SPEC.format(resamples=args.resamples))
        spec = load_spec(Path(tmp) / "gate.toml")
        with open_store(store) as con:
            baseline = write_run(con, "baseline", refs, hyps, rng)
            candidate = write_run(con, "candidate", refs, worse, rng)
        started = time.perf_counter()
        with open_store(store) as con:
            report = run_gate(con, baseline, candidate, spec)
            write_reports(report, Path(tmp) / "report")
        elapsed = time.perf_counter() - started
    metrics = len(report.comparison.metrics)
    print(
        f"compare + gate: {args.examples:,} examples, {metrics} metrics, "
        f"{args.resamples:,} resamples: {elapsed:.2f} s (target 3 s); verdict {report.verdict}"
    )


if __name__ == "__main__":
    main()
