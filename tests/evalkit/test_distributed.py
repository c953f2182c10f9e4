"""Evaluation sharded across processes by torchrun gives the run one process gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.distributed import Shard
from evalkit.evaluate import run_suite
from evalkit.results import list_runs
from evalkit.store import open_store

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SUITE = """
name = "sharded"
[datasets.support]
path = "{faq}"
limit = 12
[[tasks]]
type = "perplexity"
dataset = "support"
[[tasks]]
type = "generation"
dataset = "support"
max_new_tokens = 8
[[tasks]]
type = "bias"
probes = "{probes}"
"""


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shares_cover_the_items_once_and_gather_restores_their_order(world, monkeypatch):
    items = list(range(10))
    shares = [Shard(rank, world).mine(items) for rank in range(world)]
    assert sorted(x for share in shares for x in share) == items
    # Every process's share, as all_gather_object hands them to each process.
    monkeypatch.setattr(Shard, "all_gather", lambda self, value: shares)
    assert Shard(0, world).gather(shares[0]) == items


def _rows(store: Path) -> tuple[dict, dict, dict]:
    with open_store(store) as con:
        (run,) = list_runs(con)
        run_id = run["run_id"]
        examples = con.execute(
            "SELECT task, example_id, prompt, reference, output, metadata FROM eval_examples "
            "WHERE run_id = ?",
            [run_id],
        ).fetchall()
        scores = con.execute(
            "SELECT task, example_id, metric, value FROM eval_scores WHERE run_id = ?", [run_id]
        ).fetchall()
        summary = con.execute("SELECT summary FROM eval_runs WHERE run_id = ?", [run_id])
        summary = json.loads(summary.fetchone()[0])
        cached = con.execute("SELECT count(*) FROM generation_cache").fetchone()[0]
    return (
        {tuple(r[:2]): r[2:] for r in examples},
        {tuple(r[:3]): r[3] for r in scores},
        {"summary": summary, "cached": cached},
    )


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-9)
    return a == b


def test_two_processes_give_the_run_of_one(micro_model, tmp_path):
    suite = tmp_path / "suite.toml"
    probes = FIXTURES / "bias_probes" / "samples" / "crows_pairs_sample.csv"
    suite.write_text(SUITE.format(faq=FIXTURES / "support_faq.jsonl", probes=probes))
    run_suite(suite, micro_model, tmp_path / "one" / "evalkit.duckdb", batch_size=2)

    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547"]
    command = [*launcher, "-m", "evalkit.cli", "--workspace", str(tmp_path / "two"), "eval"]
    command += ["--model", str(micro_model), "--suite", str(suite), "--batch-size", "2"]
    done = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("complete (sharded") == 1  # rank 0 alone reports, and writes

    one_examples, one_scores, one = _rows(tmp_path / "one" / "evalkit.duckdb")
    two_examples, two_scores, two = _rows(tmp_path / "two" / "evalkit.duckdb")
    tasks = [task for task, _ in one_examples]
    assert tasks.count("perplexity:support") == tasks.count("generation:support") == 12
    assert tasks.count("bias") >= 4
    assert two_examples == one_examples  # prompts, references, generated outputs, metadata
    assert two_scores.keys() == one_scores.keys()
    # The same batches, each scored by one process: equal up to the rounding of the batches.
    differing = [k for k in one_scores if not _close(one_scores[k], two_scores[k])]
    assert not differing, [(k, one_scores[k], two_scores[k]) for k in differing[:5]]
    assert _close(one["summary"], two["summary"])
    assert two["cached"] == one["cached"] == 12  # rank 0 cached every process's responses
