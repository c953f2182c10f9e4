"""BLEU, chrF and TER: `evalkit score` against sacrebleu's command line, same files.

The references are the support FAQ's and the chatterbot topics' assistant turns, repeated to
``--segments`` lines; each hypothesis is its reference with a seeded share of its words dropped
and a neighbouring pair swapped, so every metric lands away from its ends. Both commands score
the two files with all three metrics, each as a whole process (imports included); the figure
is the fastest of ``--repeat`` runs. The scores must be the same to the sixth decimal
(``sacrebleu -w 6``; evalkit prints six). In process, evalkit's path (per-example sufficient
statistics, as an evaluation run stores them, then the corpus score of their sum) is timed
against sacrebleu's ``corpus_score``.

    .venv/bin/python benchmarks/bench_metrics.py [--segments 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from summary import emit, size

METRICS = ("bleu", "chrf", "ter")


def segments(n: int, seed: int) -> tuple[list[str], list[str]]:
    from finetune.data.corpora import load_support_faq, load_topics

    answers = [
        " ".join(m["content"].split())
        for c in load_support_faq() + load_topics()
        for m in c["messages"]
        if m["role"] == "assistant" and m["content"].strip()
    ]
    rng = random.Random(seed)
    references = [answers[i % len(answers)] for i in range(n)]
    hypotheses = []
    for ref in references:
        words = [w for w in ref.split() if rng.random() > 0.2] or ref.split()[:1]
        if len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        hypotheses.append(" ".join(words))
    return hypotheses, references


def fastest(command: list[str], repeat: int) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeat):
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=size(1_000, 100))
    parser.add_argument("--repeat", type=int, default=size(3, 1))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import sacrebleu

    from evalkit.metrics import corpus_from_stats, sacrebleu_metric, sentence_stats

    hypotheses, references = segments(args.segments, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hyp, ref = Path(tmp) / "hyp.txt", Path(tmp) / "ref.txt"
        hyp.write_text("\n".join(hypotheses) + "\n")
        ref.write_text("\n".join(references) + "\n")
        bin_dir = Path(sys.executable).parent
        ours_s, out = fastest(
            [str(bin_dir / "evalkit"), "score", str(ref), "-i", str(hyp)], args.repeat
        )
        ours = {row["metric"]: row["score"] for row in map(json.loads, out.splitlines())}
        peer = [str(bin_dir / "sacrebleu"), str(ref), "-i", str(hyp), "-m", *METRICS, "-w", "6"]
        theirs_s, out = fastest(peer, args.repeat)
        theirs = dict(zip(METRICS, (row["score"] for row in json.loads(out))))

    started = time.perf_counter()
    in_ours = {
        m: float(corpus_from_stats(m, sentence_stats(m, hypotheses, references).sum(0))[0])
        for m in METRICS
    }
    in_ours_s = time.perf_counter() - started
    started = time.perf_counter()
    in_theirs = {
        m: sacrebleu_metric(m).corpus_score(hypotheses, [references]).score for m in METRICS
    }
    in_theirs_s = time.perf_counter() - started

    print(f"{len(hypotheses):,} segments; sacrebleu {sacrebleu.__version__}")
    print(f"{'metric':<8}{'evalkit score':>16}{'sacrebleu CLI':>16}{'in process':>14}")
    for m in METRICS:
        print(f"{m:<8}{ours[m]:>16.6f}{theirs[m]:>16.6f}{in_ours[m]:>14.6f}")
    same = all(round(ours[m], 6) == round(theirs[m], 6) for m in METRICS)
    same_in = all(abs(in_ours[m] - in_theirs[m]) < 1e-9 for m in METRICS)
    print(f"whole process: evalkit score {ours_s:.2f} s, sacrebleu CLI {theirs_s:.2f} s")
    print(
        f"in process: per-example statistics + corpus {in_ours_s:.2f} s, "
        f"sacrebleu corpus_score {in_theirs_s:.2f} s"
    )
    emit(
        "metrics",
        "BLEU+chrF+TER, whole process",
        f"{ours_s:.2f} s",
        "sacrebleu CLI",
        f"{theirs_s:.2f} s",
        theirs_s / ours_s,
        same,
    )
    emit(
        "metrics",
        "BLEU+chrF+TER in process (per-example stats)",
        f"{in_ours_s:.2f} s",
        "sacrebleu corpus_score",
        f"{in_theirs_s:.2f} s",
        in_theirs_s / in_ours_s,
        same_in,
    )


if __name__ == "__main__":
    main()
