"""`evalkit demo --quick` end to end: the closed loop on the micro model, its summary's claims
checked against what the run left in the workspace (the store, the reports, the datasets)."""

import json
import shutil
from pathlib import Path

from evalkit.cli import main
from evalkit.store import open_store


def test_quick_demo_runs_the_loop_and_its_claims_hold(tmp_path, drift_cache, capsys):
    workspace = tmp_path / "workspace"
    shutil.copytree(drift_cache, workspace / "drift")  # the topic classifier, trained once
    code = main(["--workspace", str(workspace), "demo", "--quick"])
    out = capsys.readouterr().out
    summary = json.loads((workspace / "demo" / "summary.json").read_text())
    assert code == 0, summary["claims"]
    assert all(summary["claims"].values())
    for step in range(1, 14):
        assert f"[{step:>2}/13] done in" in out
    assert "SUMMARY" in out and "simulated-annotator (a simulation, not a person" in out
    assert f"evalkit app --workspace {workspace}" in out

    with open_store(workspace / "evalkit.duckdb", read_only=True) as con:
        # The drift alert started during the episode, and none before it: the episode began
        # after every calm window was judged without drift.
        alerts = con.execute("SELECT min(epoch(started_at)) FROM drift_alerts").fetchone()[0]
        drifted = con.execute(
            "SELECT epoch(judged_at) FROM drift_results WHERE drifted ORDER BY judged_at"
        ).fetchall()
        calm = con.execute(
            "SELECT count(DISTINCT pass_id) FROM drift_results WHERE epoch(judged_at) < ?",
            [drifted[0][0]],
        ).fetchone()[0]
        # The ratings are the simulation's, under its name.
        annotators = {
            r for (r,) in con.execute("SELECT DISTINCT annotator FROM ratings").fetchall()
        }
        gates = con.execute("SELECT verdict, path FROM gate_reports ORDER BY created_at").fetchall()
    assert alerts is not None and alerts >= drifted[0][0]
    assert calm >= 1
    assert annotators == {"simulated-annotator"}

    # v2 beats v1 on the held-out topics with significance, as the gate's own report says.
    report = json.loads((Path(gates[-1][1]) / "report.json").read_text())
    assert Path(gates[-1][1]).parent == workspace / "reports"
    topics = next(
        m
        for m in report["metrics"]
        if m["task"] == "perplexity:topics" and m["metric"] == "perplexity"
    )
    assert topics["significant"] and topics["candidate_better"]
    assert topics["high"] < 0
    assert (
        summary["figures"]["v2_topics_perplexity_after"]
        < summary["figures"]["v2_topics_perplexity_before"]
    )
    assert [verdict for verdict, _ in gates] == [
        summary["figures"]["v1_gate"],
        summary["figures"]["v2_gate"],
    ]
    # The regression set holds corrected exchanges that v2 did not train on.
    regression = (
        (workspace / "datasets" / "demo-eval" / "regression.jsonl").read_text().splitlines()
    )
    trained = (workspace / "datasets" / "demo-v2" / "train.jsonl").read_text()
    assert regression
    for line in regression:
        assert json.loads(line)["source"] == "corrections"
        assert json.dumps(json.loads(line)["messages"], ensure_ascii=False) not in trained
