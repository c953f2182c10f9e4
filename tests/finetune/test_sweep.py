import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest

from evalkit.cli import main
from evalkit.errors import EvalkitError
from finetune.sweep import parse_space, sweep
from finetune.train import TrainConfig


def test_parse_space_types_the_choices():
    space = parse_space(["learning_rate=1e-3,3e-4", "lora=true,false", "batch-size=4"])
    assert space == {"learning_rate": [1e-3, 3e-4], "lora": [True, False], "batch_size": [4]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("learning_rat=1", "did you mean: learning_rate?"),
        ("batch_size=x", "not a int"),
        ("lora=maybe", "not a bool"),
        ("out=x", "unknown sweep option 'out'"),
        ("seed", "NAME=VALUE"),
    ],
)
def test_parse_space_errors(spec, message):
    with pytest.raises(EvalkitError) as info:
        parse_space([spec])
    assert message in str(info.value) + info.value.hint


@pytest.fixture
def base(micro_model, topics_dataset):
    return TrainConfig(
        base=str(micro_model),
        data=str(topics_dataset),
        max_steps=3,
        batch_size=4,
        eval_every=3,
        warmup_steps=1,
    )


def test_grid_ranks_every_combination(base, tmp_path):
    result = sweep(base, {"learning_rate": [1e-2, 1e-4], "batch_size": [2, 4]}, tmp_path)
    rows = result.ranked
    assert len(rows) == 4 and len({(r["learning_rate"], r["batch_size"]) for r in rows}) == 4
    ppl = [r["val_ppl"] for r in rows]
    assert ppl == sorted(ppl)
    assert not result.failed and not result.stopped and result.exit_code == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == asdict(result)
    assert (tmp_path / "results.md").read_text().count("\n") == 2 + 4
    # Asking again reads the finished trials back.
    stamp = (tmp_path / "trial-000" / "model" / "model.safetensors").stat().st_mtime
    again = sweep(base, {"learning_rate": [1e-2, 1e-4], "batch_size": [2, 4]}, tmp_path)
    assert again == result
    assert (tmp_path / "trial-000" / "model" / "model.safetensors").stat().st_mtime == stamp
    # Other options into the same folder do not pass its old trials off as theirs.
    with pytest.raises(EvalkitError, match="finished trial with other options"):
        sweep(replace(base, seed=1), {"learning_rate": [1e-2, 1e-4]}, tmp_path)


@pytest.mark.parametrize("method", ["random", "optuna"])
def test_sampled_methods_run_the_asked_number_of_trials(base, tmp_path, method):
    result = sweep(
        base, {"learning_rate": [1e-2, 3e-3, 1e-3, 1e-4]}, tmp_path, method=method, trials=2, seed=1
    )
    assert len(result.ranked) == 2 and all(r["val_ppl"] for r in result.ranked)


def test_cli_sweep(micro_model, topics_dataset, tmp_path, capsys):
    code = main(
        [
            "finetune",
            "sweep",
            "--base",
            str(micro_model),
            "--data",
            str(topics_dataset),
            "--out",
            str(tmp_path),
            "--param",
            "learning_rate=1e-2,1e-3",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--eval-every",
            "2",
            "--warmup-steps",
            "1",
        ]
    )
    assert code == 0
    assert (
        "| rank | trial | learning_rate | validation perplexity | run |" in capsys.readouterr().out
    )


def _sweep_args(micro_model, topics_dataset, out, *params, steps=2):
    return ["finetune", "sweep", "--base", str(micro_model), "--data", str(topics_dataset),
            "--out", str(out), *(a for p in params for a in ("--param", p)),
            "--max-steps", str(steps), "--batch-size", "4", "--eval-every", "2",
            "--warmup-steps", "1", "--log-every", "1"]  # fmt: skip


def test_failed_trials_are_listed_apart_never_ranked(micro_model, topics_dataset, tmp_path, capsys):
    # A batch of 600 rows is more than the data has: that trial fails.
    args = _sweep_args(micro_model, topics_dataset, tmp_path / "some", "batch_size=4,600")
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "some" / "results.json").read_text())
    assert [r["batch_size"] for r in saved["ranked"]] == [4]
    (failed,) = saved["failed"]
    assert failed["batch_size"] == 600 and "fewer than one global batch" in failed["error"]
    assert "val_ppl" not in failed
    assert "| 1 | 0 | 4 |" in out and "| 2 |" not in out
    assert "Failed (not ranked):" in out and "- trial 1 (" in out
    assert "1 ranked, 1 failed, 0 stopped" in out
    # None finished: nothing ranked, and the exit code says so.
    args = _sweep_args(micro_model, topics_dataset, tmp_path / "none", "batch_size=500,600")
    assert main(args) == 2
    saved = json.loads((tmp_path / "none" / "results.json").read_text())
    assert saved["ranked"] == [] and len(saved["failed"]) == 2


def test_sigterm_stops_the_sweep_and_the_same_command_resumes_it(
    base, micro_model, topics_dataset, tmp_path
):
    out = tmp_path / "sweep"
    args = _sweep_args(micro_model, topics_dataset, out, "learning_rate=1e-2,1e-3,1e-4", steps=40)
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalkit.cli", *args], stdout=subprocess.PIPE, text=True
    )
    metrics = out / "trial-001" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stdout
    saved = json.loads((out / "results.json").read_text())
    assert [r["trial"] for r in saved["ranked"]] == [0]
    (stopped,) = saved["stopped"]
    assert stopped["trial"] == 1 and "stopped by SIGTERM" in stopped["error"]
    assert saved["signal"] == signal.SIGTERM and not saved["failed"]
    assert not (out / "trial-002").exists()  # no trial starts after the signal
    assert "Stopped (not ranked):" in stdout and "| 2 |" not in stdout
    # The same command: trial 0 read back, trial 1 resumed from its checkpoint, trial 2 run.
    resumed = sweep(
        replace(base, max_steps=40, eval_every=2, log_every=1),
        {"learning_rate": [1e-2, 1e-3, 1e-4]},
        out,
    )
    assert resumed.exit_code == 0 and sorted(r["trial"] for r in resumed.ranked) == [0, 1, 2]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 41))
