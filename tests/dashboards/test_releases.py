"""The Releases page: two runs side by side (per slice, plots, worst examples), a link to runs
that no longer exist, and the lineage of a model."""

from datetime import UTC, datetime

import pytest

from evalkit.accounts import Account
from evalkit.gate.report import REPORTS_SCHEMA
from evalkit.results import ExampleResult, add_results, create_run, finish_run
from evalkit.store import open_store
from monitor.events import EventLog, make_event

from .conftest import page

ENGINEER = Account("eng", "engineer")
SUITE = {"tasks": [{"name": "t", "type": "perplexity", "dataset": "d"}]}
LINEAGE = {
    "dataset": "/data/next",
    "dataset_hash": "d" * 64,
    "training_run": "/runs/retrain-1",
    "base_model": "/models/base",
}


def run(con, name: str, model_hash: str, worse_on_b: float, lineage=None) -> str:
    """Six examples, topics a and b; ``worse_on_b`` raises the NLL of topic b's examples."""
    run_id = create_run(
        con, name=name, model_hash=model_hash, model_path=f"/models/{name}", suite_name="s",
        suite_hash="h", suite=SUITE, lineage=lineage or {},
    )  # fmt: skip
    add_results(
        con,
        run_id,
        [
            ExampleResult(
                "t",
                f"e{i}",
                {
                    "nll": 2.0 + 0.1 * i + (worse_on_b * i if i % 2 else 0),
                    "tokens": 4,
                    "words": 3,
                    "bytes": 12,
                },
                metadata={"topic": "b" if i % 2 else "a"},
                prompt=f"text {i}",
            )
            for i in range(6)
        ],
    )
    finish_run(con, run_id, summary={})
    return run_id


@pytest.fixture
def runs(workspace):
    with open_store(workspace.store_path) as con:
        base = run(con, "prod", "hash-prod", 0.0)
        cand = run(con, "next", "hash-next", 0.5, LINEAGE)
        con.execute(REPORTS_SCHEMA)
        con.execute(
            "INSERT INTO gate_reports VALUES ('g1', ?, ?, '{}', 'FAIL', ?, '/reports/g1', '{}')",
            [base, cand, datetime.now(UTC).replace(tzinfo=None)],
        )
    log = EventLog(workspace.events_dir)
    log.extend(make_event(model="support", model_version="hash-next", response="hi") for _ in "abc")
    log.close()
    return base, cand


def test_a_link_opens_the_comparison_with_slices_plots_and_worst_examples(workspace, runs):
    base, cand = runs
    at = page("releases", ENGINEER)
    at.query_params["baseline"], at.query_params["candidate"] = base, cand
    at.run()
    assert not at.exception and not at.error
    metrics = at.dataframe[1].value
    assert list(metrics["task"].unique()) == ["t"] and "perplexity" in list(metrics["metric"])
    by = next(s for s in at.selectbox if s.label == "Per slice of")
    by.select("topic").run()
    per_slice = at.dataframe[2].value
    ppl = per_slice[per_slice["metric"] == "perplexity"].set_index("topic")
    # Only topic b's examples (1, 3, 5) got worse: its interval is above 0, a's is 0.
    assert ppl.loc["b", "low"] > 0 and ppl.loc["a", "difference"] == 0
    next(s for s in at.selectbox if s.label == "Worst examples by").select("t · perplexity").run()
    assert [e.label.split(":")[0] for e in at.expander][-3:] == ["e5", "e3", "e1"]
    worst = at.expander[-3]
    scored = "(no response: a scored text)"
    assert [t.value for t in worst.text] == ["text 5", scored, scored]
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2  # the intervals of every metric, the per-slice bars


def test_a_link_to_a_run_that_no_longer_exists_says_so(workspace, runs):
    at = page("releases", ENGINEER)
    at.query_params["baseline"], at.query_params["candidate"] = "gone", runs[1]
    at.run()
    assert not at.exception
    assert "no evaluation run 'gone' in the store" in at.error[0].value
    assert "it may have been removed" in at.error[0].value


def test_the_lineage_goes_from_the_dataset_to_the_served_version(workspace, runs):
    at = page("releases", ENGINEER)
    at.selectbox(key="lineage_run").select(runs[1]).run()
    chain = at.dataframe[-1].value
    assert list(chain["step"]) == [
        "dataset", "training run", "model", "evaluation run", "gate", "served version",
    ]  # fmt: skip
    steps = dict(zip(chain["step"], chain["detail"]))
    assert steps["dataset"] == "/data/next" and steps["training run"].startswith("/runs/retrain-1")
    assert steps["gate"].startswith("FAIL")
    assert steps["served version"].startswith("3 exchanges as support")
    assert at.caption[-1].value.startswith("dataset → training run → model")
