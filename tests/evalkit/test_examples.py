"""`evalkit runs RUN --examples`: each example's texts and scores, worst first by a metric."""

import json
import math

import pytest

from evalkit.cli import main
from evalkit.examples import run_examples
from evalkit.results import ExampleResult, add_results, create_run, finish_run
from evalkit.store import open_store
from evalkit.workspace import open_workspace

NLL = [3.0, 9.0, 1.0, 6.0]  # per example, over 3 tokens each
SUITE = {
    "tasks": [
        {"name": "ppl", "type": "perplexity", "dataset": "d"},
        {"name": "gen", "type": "generation", "dataset": "d"},
    ]
}


@pytest.fixture
def workspace(tmp_path):
    ws = open_workspace(tmp_path / "ws")
    with open_store(ws.store_path) as con:
        run_id = create_run(con, name="prod", suite_name="s", suite_hash="h", suite=SUITE)
        rows = [
            ExampleResult(
                "ppl", f"e{i}", {"nll": nll, "tokens": 3, "words": 2, "bytes": 9},
                prompt=f"text {i}",
            )
            for i, nll in enumerate(NLL)
        ] + [
            ExampleResult(
                "gen", f"e{i}", {"distinct_2": d, "repetitive": 0.0}, {"topic": "net"},
                prompt=json.dumps([{"role": "user", "content": f"question {i}"}]),
                reference=f"answer {i}", output=f"output {i}\nsecond line",
            )
            for i, d in enumerate([0.5, 0.9, 0.1])
        ]  # fmt: skip
        add_results(con, run_id, rows)
        finish_run(con, run_id, summary={})
    return ws


def _runs(ws, *args):
    return main(["--workspace", str(ws.root), "runs", *args])


def test_examples_show_prompt_reference_output_and_scores(workspace, capsys):
    assert _runs(workspace, "prod", "--examples", "--task", "gen") == 0
    out = capsys.readouterr().out
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 3
    assert blocks[1].splitlines() == [
        "gen  e1  (distinct_2 0.9, repetitive 0)",
        "  user: question 1",
        "  reference: answer 1",
        "  output: output 1",
        "  second line",
    ]


def test_worst_first_follows_the_metrics_direction(workspace, capsys):
    with open_store(workspace.store_path) as con:
        worst_ppl = run_examples(con, "prod", worst="perplexity")
        worst_d2 = run_examples(con, "prod", worst="distinct_2", limit=2)
    # Perplexity: lower is better, so the highest per-example exp(nll / tokens) comes first.
    expected = sorted(range(4), key=lambda i: -NLL[i])
    assert [e["example_id"] for e in worst_ppl] == [f"e{i}" for i in expected]
    assert [e["perplexity"] for e in worst_ppl] == pytest.approx(
        [math.exp(NLL[i] / 3) for i in expected]
    )
    # distinct_2: higher is better, so the lowest comes first.
    assert [e["example_id"] for e in worst_d2] == ["e2", "e0"]
    assert _runs(workspace, "prod", "--worst", "perplexity", "--jsonl", "--limit", "1") == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["example_id"] == "e1" and row["prompt"] == [{"content": "text 1"}]
    assert row["scores"] == {"nll": 9.0, "tokens": 3, "words": 2, "bytes": 9}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "gne"], "unknown task 'gne'"),
        (["--worst", "perplexty"], "did you mean: perplexity?"),
        (["--worst", "length"], "unknown metric 'length'"),
    ],
)
def test_bad_selections_are_named(workspace, capsys, args, message):
    assert _runs(workspace, "prod", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
