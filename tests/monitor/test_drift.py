"""Drift decisions on replays of real prompts: none by chance, one soon after a real onset.

The events are built from the shipped corpora: support-FAQ questions (the domain) and chatterbot
topics with chit-chat (the drift), with token counts from the texts and latencies from fixed
seeded distributions, so only what the prompts carry can drift.
"""

import json
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from evalkit.cli import main
from finetune.data.corpora import load_chitchat, load_support_faq, load_topics

START = datetime(2026, 12, 1, tzinfo=UTC)
SUPPORT = [c["messages"][0]["content"] for c in load_support_faq()]
OTHER = [c["messages"][0]["content"] for c in load_topics()] + [
    c["messages"][0]["content"] for c in load_chitchat()[:600]
]


def events(prompts, n, start, seed, first=0):
    """``n`` exchanges a second apart from ``start``, prompts drawn from ``prompts``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text = prompts[rng.integers(len(prompts))]
        rows.append(
            {
                "event_id": f"ev-{first + i:06d}",
                "timestamp": (start + timedelta(seconds=i)).isoformat(),
                "prompt": json.dumps([{"role": "user", "content": text}]),
                "response": "See the FAQ." if rng.random() < 0.98 else "I'm sorry, I can't help.",
                "prompt_tokens": len(text.split()) + 8,
                "completion_tokens": int(rng.integers(8, 64)),
                "latency_s": float(rng.gamma(4.0, 0.05)),
                "ttft_s": float(rng.gamma(2.0, 0.01)),
                "finish_reason": "stop" if rng.random() < 0.9 else "length",
            }
        )
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def workspace(tmp_path, drift_cache, monkeypatch):
    shutil.copytree(drift_cache, tmp_path / "ws" / "drift")
    monkeypatch.setenv("EVALKIT_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


def backtest(capsys, *args) -> tuple[int, dict]:
    code = main(["monitor", "backtest", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_long_replay_without_drift_raises_no_alert(workspace, tmp_path, capsys):
    reference = write(tmp_path / "ref.jsonl", events(SUPPORT, 1000, START, seed=1))
    current = events(SUPPORT, 8000, START + timedelta(days=1), seed=2)
    current = write(tmp_path / "cur.jsonl", current)
    code, result = backtest(
        capsys, "--reference", str(reference), "--current", str(current), "--window-events", "200"
    )
    assert result["windows"] == 40 and result["alerts"] == [] and code == 0


def test_a_replay_with_drift_alerts_soon_after_the_onset_from_later_windows(
    workspace, tmp_path, capsys
):
    onset, window, hold = 3000, 200, 3
    reference = write(tmp_path / "ref.jsonl", events(SUPPORT, 1000, START, seed=1))
    later = START + timedelta(days=1)
    current = events(SUPPORT, onset, later, seed=3) + events(
        OTHER, 2000, later + timedelta(seconds=onset), seed=4, first=onset
    )
    current = write(tmp_path / "cur.jsonl", current)
    code, result = backtest(
        capsys, "--reference", str(reference), "--current", str(current),
        "--window-events", str(window), "--hold", str(hold),
    )  # fmt: skip
    assert code == 1
    fired = {a["feature"]: a for a in result["alerts"]}
    assert {"topic", "prompt_embedding"} <= set(fired)
    for alert in fired.values():
        delay = alert["fired_index"] - onset
        print(f"{alert['feature']}: fired {delay} events after the onset")
        assert alert["first_index"] >= onset  # raised by windows after the onset only
        assert 0 < delay <= hold * window + window
        assert alert["end"] is None  # the drift lasts to the end of the file


def test_backtest_refuses_bad_files_naming_what_is_wrong(workspace, tmp_path, capsys):
    reference = write(tmp_path / "ref.jsonl", events(SUPPORT, 300, START, seed=1))
    rows = events(SUPPORT, 300, START + timedelta(days=1), seed=2)
    rows[10], rows[11] = rows[11], rows[10]  # the file's rows 11 and 12
    shuffled = write(tmp_path / "shuffled.jsonl", rows)
    few = write(tmp_path / "few.jsonl", events(SUPPORT, 20, START, seed=1))

    def fails(*args) -> str:
        assert main(["monitor", "backtest", *args]) == 2
        return capsys.readouterr().err

    assert "row 12 is earlier" in fails("--reference", str(reference), "--current", str(shuffled))
    assert "20 exchanges: 200 or more" in fails(
        "--reference", str(few), "--current", str(reference)
    )
    assert "did you mean: topic?" in fails(
        "--reference", str(reference), "--current", str(reference), "--features", "topc"
    )
    assert "no column 'question'" in fails(
        "--reference", str(reference), "--current", str(reference), "--map", "question=prompt"
    )


def test_a_drift_pass_writes_the_store_flags_the_window_and_queues_it(workspace, tmp_path, capsys):
    import duckdb

    reference = write(tmp_path / "ref.jsonl", events(SUPPORT, 600, START, seed=1))
    drifted = write(
        tmp_path / "drifted.jsonl", events(OTHER, 300, START + timedelta(days=1), seed=5)
    )
    assert main(["monitor", "import", str(drifted)]) == 0
    args = ["monitor", "drift", "--reference", f"file:{reference}", "--window-events", "300"]
    for _ in range(3):  # three drifted passes in a row raise the alert (--hold 3)
        assert main([*args]) == 1
    out = capsys.readouterr().out
    assert "DRIFT" in out and "alert firing: drift of topic" in out
    con = duckdb.connect(str(workspace / "evalkit.duckdb"))
    rows = con.execute(
        """SELECT count(*), count(DISTINCT pass_id) FROM drift_results
           WHERE feature = 'topic' AND drifted"""
    ).fetchone()
    alerts = con.execute("SELECT feature FROM drift_alerts WHERE ended_at IS NULL").fetchall()
    con.close()
    assert rows == (3, 3) and ("topic",) in alerts
    assert main(["monitor", "alerts"]) == 0
    assert "topic drifted" in capsys.readouterr().out
    assert main(["rate", "enqueue", "events", "--select", "drift"]) == 0
    assert "300" in capsys.readouterr().out


def test_an_empty_window_is_refused(workspace, tmp_path, capsys):
    reference = write(tmp_path / "ref.jsonl", events(SUPPORT, 300, START, seed=1))
    assert main(["monitor", "import", str(reference)]) == 0
    code = main(["monitor", "drift", "--reference", f"file:{reference}", "--window", "1m"])
    assert code == 2 and "the window holds no exchange" in capsys.readouterr().err


def test_the_topic_classifier_reports_its_held_out_accuracy(drift_cache):
    from monitor.drift.topics import TopicModel

    topics = TopicModel.load(drift_cache / "topics.npz")
    print(f"topic accuracy {topics.accuracy:.3f} on {topics.held_out} held-out conversations")
    assert {"support", "chitchat", "ai"} <= set(topics.labels)
    assert topics.accuracy > 0.6 and topics.held_out > 300


def test_refusals_and_feedback_are_read_from_the_log(tmp_path):
    from monitor.drift.features import open_events, read_frame
    from monitor.events import EventLog, make_event

    log = EventLog(tmp_path / "events")
    answered = make_event(prompt="Hi", response="I'm sorry, but I can't help with that.")
    plain = make_event(prompt="Hi", response="Hello!", response_id="r2")
    log.extend([answered, plain, make_event(type="feedback", response_id="r2", user_feedback=-1)])
    log.close()
    frame = read_frame(open_events(tmp_path / "events"))
    assert list(frame.numeric["refusal"]) == [1.0, 0.0]
    assert sorted(frame.categorical["feedback"]) == ["down", "none"]


def test_an_evaluation_run_is_a_reference(workspace, tmp_path, capsys):
    from evalkit.results import ExampleResult, add_results, create_run, finish_run
    from evalkit.store import open_store

    with open_store(workspace / "evalkit.duckdb") as con:
        run = create_run(con, name="support-eval", model_hash="m")
        rows = [
            ExampleResult(
                task="support",
                example_id=str(i),
                prompt=json.dumps(c["messages"][:1]),
                reference=c["messages"][1]["content"],
                output="See the FAQ.",
                scores={},
            )
            for i, c in enumerate(load_support_faq())
        ]
        add_results(con, run, rows)
        finish_run(con, run, summary={})
    calm = events(SUPPORT, 300, START + timedelta(days=1), seed=6)
    assert main(["monitor", "import", str(write(tmp_path / "calm.jsonl", calm))]) == 0
    args = ["monitor", "drift", "--reference", "run:support-eval", "--window-events", "300"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "reference: run:support-eval, 298 exchanges" in captured.err
    assert "latency_s: 0 reference values, not judged" in captured.err  # not served: no latency
    topic = next(line for line in captured.out.splitlines() if line.startswith("topic "))
    assert topic.endswith("ok")
    drifted = events(OTHER, 300, START + timedelta(days=2), seed=7, first=300)
    assert main(["monitor", "import", str(write(tmp_path / "drift.jsonl", drifted))]) == 0
    assert main(args) == 1
    topic = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("topic "))
    assert topic.endswith("DRIFT")


def test_a_period_of_the_log_is_a_reference(workspace, tmp_path, capsys):
    calm = events(SUPPORT, 300, START, seed=8)
    drifted = events(OTHER, 300, START + timedelta(days=1), seed=9, first=300)
    for name, rows in (("calm", calm), ("drift", drifted)):
        assert main(["monitor", "import", str(write(tmp_path / f"{name}.jsonl", rows))]) == 0
    args = ["monitor", "drift", "--window-events", "300", "--features", "topic"]
    assert main([*args, "--reference", "log:2026-12-01..2026-12-02"]) == 1
    captured = capsys.readouterr()
    assert "reference: log:2026-12-01..2026-12-02, 300 exchanges" in captured.err
    assert main([*args, "--reference", "log:2026-12-01..yesterday"]) == 2
    assert "'yesterday' is not ISO 8601" in capsys.readouterr().err


def test_a_job_judges_only_the_exchanges_logged_from_its_start(workspace, tmp_path):
    """A restarted server's drift job does not re-judge the window of the process before."""
    from evalkit.errors import EvalkitError
    from finetune.data.corpora import labelled_prompts
    from monitor.drift.detector import DriftConfig
    from monitor.drift.job import DriftJob, load_reference, open_featurizer

    reference = write(tmp_path / "ref.jsonl", events(SUPPORT, 300, START, seed=1))
    later = START + timedelta(days=1)
    old = write(tmp_path / "old.jsonl", events(OTHER, 200, later, seed=5))
    assert main(["monitor", "import", str(old)]) == 0
    config = DriftConfig(window_events=100, features=("topic",))
    featurizer, _ = open_featurizer(workspace / "drift", labelled_prompts)
    ref = load_reference(f"file:{reference}", workspace / "events", featurizer, config)

    def job(since):
        return DriftJob(ref, config, workspace / "events", featurizer, every=0, model="all",
                        reference_label="ref", since=since)  # fmt: skip

    assert len(job(None).run_once()[0].frame) == 100
    assert len(job(later + timedelta(seconds=150)).run_once()[0].frame) == 50
    with pytest.raises(EvalkitError, match="the window holds no exchange"):
        job(later + timedelta(hours=1)).run_once()
