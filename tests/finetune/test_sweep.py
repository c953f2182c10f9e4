import json
from dataclasses import replace

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
    rows = sweep(base, {"learning_rate": [1e-2, 1e-4], "batch_size": [2, 4]}, tmp_path)
    assert len(rows) == 4 and len({(r["learning_rate"], r["batch_size"]) for r in rows}) == 4
    ppl = [r["val_ppl"] for r in rows]
    assert ppl == sorted(ppl)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    assert (tmp_path / "results.md").read_text().count("\n") == 2 + 4
    # Asking again reads the finished trials back.
    stamp = (tmp_path / "trial-000" / "model" / "model.safetensors").stat().st_mtime
    assert sweep(base, {"learning_rate": [1e-2, 1e-4], "batch_size": [2, 4]}, tmp_path) == rows
    assert (tmp_path / "trial-000" / "model" / "model.safetensors").stat().st_mtime == stamp
    # Other options into the same folder do not pass its old trials off as theirs.
    with pytest.raises(EvalkitError, match="finished trial with other options"):
        sweep(replace(base, seed=1), {"learning_rate": [1e-2, 1e-4]}, tmp_path)


@pytest.mark.parametrize("method", ["random", "optuna"])
def test_sampled_methods_run_the_asked_number_of_trials(base, tmp_path, method):
    rows = sweep(
        base, {"learning_rate": [1e-2, 3e-3, 1e-3, 1e-4]}, tmp_path, method=method, trials=2, seed=1
    )
    assert len(rows) == 2 and all(r["val_ppl"] for r in rows)


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
