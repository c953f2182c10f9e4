"""The Retrain page: a training set from feedback, a job launched in its own session, its
progress, the gate's verdict and the loop's history."""

import json
import os
import shlex
import time
from datetime import UTC, datetime

import pytest

from dashboards.retrain import build_training_set, jobs
from evalkit.accounts import Account, NotAllowed
from evalkit.gate.report import REPORTS_SCHEMA
from evalkit.rating.annotate import claim, send
from evalkit.rating.queue import Item
from evalkit.rating.rubric import Rating, load_rubric
from evalkit.results import create_run, finish_run
from evalkit.store import open_store
from monitor.events import EventLog, make_event

from .conftest import page, queue, rows

ENGINEER = Account("eng", "engineer")


@pytest.fixture
def feedback(workspace, micro_model):
    """A baseline run of the micro model, one correction and one A/B choice by an annotator,
    and two exchanges rated down in production, one of them corrected by its user."""
    ask = [{"role": "user", "content": "How do I reset my router password?"}]
    queue(
        workspace,
        [
            Item("correction", ask, "Buy a new router.", {"n": 1}),
            Item(
                "pair",
                [{"role": "user", "content": "What does the blinking orange light mean?"}],
                "It is updating its firmware.",
                {"n": 2},
                response_b="No idea.",
            ),
        ],
    )
    annotator, rubric = Account("ann", "annotator"), load_rubric()
    with open_store(workspace.store_path) as con:
        answer = "Hold the reset button for ten seconds, then sign in with the default password."
        for _ in range(2):
            item = claim(con, annotator)
            rating = Rating(corrected=answer) if item.kind == "correction" else Rating(choice="A")
            send(con, annotator, item.item_id, rating, rubric=rubric)
        run = create_run(
            con, name="prod", model_path=str(micro_model), suite_name="s", suite_hash="h", suite={}
        )
        finish_run(con, run, summary={})
    log = EventLog(workspace.events_dir)
    for n, (question, correction) in enumerate(
        [("Can I move my plan to another city?", "Yes: change the address in your account."),
         ("Why is my bill higher this month?", None)]
    ):  # fmt: skip
        log.append(
            make_event(
                event_id=f"ev-{n}",
                response_id=f"r-{n}",
                prompt=[{"role": "user", "content": question}],
                response="I cannot help with that.",
            )
        )  # fmt: skip
        log.append(
            make_event(
                type="feedback", response_id=f"r-{n}", user_feedback=-1, correction=correction
            )
        )
    log.close()
    return workspace, run


def build(at):
    next(b for b in at.button if b.label == "Build it from the feedback").click().run()
    assert not at.exception and not at.error, at.error
    return at


def test_the_training_set_is_built_from_each_kind_of_feedback(feedback):
    workspace, _ = feedback
    at = build(page("retrain", ENGINEER))
    shown = {m.label: m.value for m in at.metric}
    assert [shown[s] for s in ("corrections", "preferences", "production")] == ["1", "1", "1"]
    assert "1 low-rated exchange(s) have no correction" in at.caption[0].value
    built = at.session_state["training_set"]
    train = [json.loads(line) for line in (built.folder / "train.jsonl").read_text().splitlines()]
    answers = {c["messages"][-1]["content"] for c in train}
    assert answers <= {
        "Hold the reset button for ten seconds, then sign in with the default password.",
        "It is updating its firmware.",
        "Yes: change the address in your account.",
    }
    assert int(shown["kept (train)"]) == len(train) and (built.folder / "report.md").is_file()
    ((who, detail),) = rows(
        workspace, "SELECT who, detail FROM app_audit WHERE action = 'build_training_set'"
    )
    assert who == "eng" and json.loads(detail)["corrections"] == 1


def test_an_annotator_may_not_build_a_training_set(feedback, tmp_path):
    workspace, _ = feedback
    with open_store(workspace.store_path) as con, pytest.raises(NotAllowed, match="retrain"):
        build_training_set(con, Account("ann", "annotator"), workspace.events_dir, tmp_path)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # the page reaped it already
            return
        time.sleep(0.1)
    pytest.fail(f"job {pid} did not stop")


def test_a_launched_job_runs_in_its_own_session_and_shows_progress_and_verdict(feedback, tmp_path):
    workspace, baseline = feedback
    at = build(page("retrain", ENGINEER))
    dataset = str(at.session_state["training_set"].folder)
    suite, spec = tmp_path / "suite.toml", tmp_path / "gate.toml"
    suite.write_text("# the baseline's suite\n")
    spec.write_text("# the gate's rules\n")
    at.text_input[2].input(str(suite))
    at.text_input[3].input(str(spec))
    at.number_input[0].set_value(2)
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and "started" in at.success[0].value
    (job,) = jobs_of(workspace)
    assert os.getsid(job["pid"]) == job["pid"]  # a session of its own: outlives the app
    run_dir = workspace.root / "runs" / job["job_id"]
    assert job["run_dir"] == str(run_dir) and job["dataset"] == dataset
    command = json.loads(job["command"])
    assert command[:2] == ["sh", "-c"]
    train, evaluate, gate = (shlex.split(part) for part in command[2].split(";")[0].split("&&"))
    model = rows(workspace, "SELECT model_path FROM eval_runs")[0][0]
    assert train[train.index("finetune") :] == [
        "finetune", "train", "--base", model, "--data", dataset, "--out", str(run_dir),
        "--max-steps", "2",
    ]  # fmt: skip
    assert evaluate[evaluate.index("eval") :] == [
        "eval", "--suite", str(suite), "--model", f"{run_dir}/model", "--name", job["job_id"],
    ]  # fmt: skip
    assert gate[gate.index("gate") :] == [
        "gate", "--baseline", baseline, "--candidate", job["job_id"], "--spec", str(spec),
    ]  # fmt: skip
    assert any(f"{job['job_id']}** · training" in m.value for m in at.markdown)

    next(b for b in at.button if b.label == "Stop").click().run()
    _wait_gone(job["pid"])
    assert rows(workspace, "SELECT who FROM app_audit WHERE action = 'stop_retrain'") == [("eng",)]

    # What the training writes as it goes, and the gate's verdict on the evaluation run.
    (run_dir / "config.json").write_text(json.dumps({"max_steps": 4}))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 - s / 2}) + "\n" for s in (1, 2, 3))
    )
    (run_dir / "exit_code").write_text("1\n")
    with open_store(workspace.store_path) as con:
        candidate = create_run(con, name=job["job_id"], suite_name="s", suite_hash="h", suite={})
        finish_run(con, candidate, summary={})
        con.execute(REPORTS_SCHEMA)
        con.execute(
            "INSERT INTO gate_reports VALUES ('g1', ?, ?, '{}', 'FAIL', ?, '', '{}')",
            [baseline, candidate, datetime.now(UTC).replace(tzinfo=None)],
        )
    at.run()
    assert not at.exception
    assert any(f"{job['job_id']}** · done ❌ FAIL" in m.value for m in at.markdown)
    (bar,) = at.get("progress")
    assert bar.value == 75  # step 3 of 4
    (loop,) = [d.value for d in at.dataframe]
    assert list(loop["feedback"]) == ["1 corrections, 1 preferences, 1 production"]
    assert list(loop["verdict"]) == ["FAIL"] and list(loop["baseline"]) == [baseline]


def jobs_of(workspace):
    with open_store(workspace.store_path) as con:
        return jobs(con)
