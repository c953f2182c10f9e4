import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evalkit.cli import main
from evalkit.errors import EvalkitError
from finetune.train import TrainConfig, train


def config(micro_model, data, out, **kw):
    values = dict(
        base=str(micro_model),
        data=str(data),
        out=str(out),
        max_steps=6,
        batch_size=4,
        eval_every=3,
        save_every=2,
        log_every=1,
        warmup_steps=2,
    )
    return TrainConfig(**(values | kw))


def cli_args(micro_model, data, out, steps, batch_size):
    """`evalkit finetune train` arguments matching `config(...)`."""
    return [
        "-m",
        "evalkit.cli",
        "finetune",
        "train",
        "--base",
        str(micro_model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--eval-every",
        "3",
        "--save-every",
        "2",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
    ]


def weights(run):
    return load_file(Path(run) / "model" / "model.safetensors")


def test_a_run_directory_holds_everything(micro_model, topics_dataset, tmp_path):
    run = train(config(micro_model, topics_dataset, tmp_path / "run")).run
    for name in ("config.json", "metrics.jsonl", "summary.json", "README.md"):
        assert (run / name).is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "tokens_per_s"} <= set(metrics[0]) and "val_ppl" in metrics[2]
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.model_type == "gpt2"
    assert (run / "best" / "model.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["padding_fraction"] < 0.25  # 64-token rows of 20-40-token chats
    card = (run / "README.md").read_text()
    assert summary["dataset_hash"] in card and summary["chat_template_fingerprint"] in card
    base = load_file(Path(micro_model) / "model.safetensors")
    assert any(not torch.equal(base[k], v) for k, v in weights(run).items())


def test_same_config_same_weights(micro_model, topics_dataset, tmp_path):
    a = train(config(micro_model, topics_dataset, tmp_path / "a", max_steps=3)).run
    b = train(config(micro_model, topics_dataset, tmp_path / "b", max_steps=3)).run
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_run_resumes_exactly(micro_model, topics_dataset, tmp_path):
    steps = 8
    whole = train(config(micro_model, topics_dataset, tmp_path / "whole", max_steps=steps)).run
    out = tmp_path / "cut"
    command = [sys.executable, *cli_args(micro_model, topics_dataset, out, steps, 4)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    stopped_at = len(metrics.read_text().splitlines())
    assert 3 <= stopped_at < steps
    resumed = train(config(micro_model, topics_dataset, out, max_steps=steps), resume=True).run
    wa, wb = weights(whole), weights(resumed)
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff == 0, f"stopped after step {stopped_at}: max difference {diff}"
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == list(
        range(1, steps + 1)
    )


def _train_in_a_new_process(cfg: TrainConfig, resume: bool = False, env: dict | None = None):
    """``train()`` called from Python in a process of its own, with no MKL setting given."""
    code = (
        "import json, sys; from finetune.train import TrainConfig, train; "
        "train(TrainConfig(**json.loads(sys.argv[1])), resume=sys.argv[2] == 'yes')"
    )
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | (env or {})
    args = [sys.executable, "-c", code, json.dumps(asdict(cfg)), "yes" if resume else "no"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_train_from_python_resumes_exactly_in_another_process(
    micro_model, topics_dataset, tmp_path
):
    """Whatever makes resume exact is set by train() itself, not by the CLI."""
    steps = dict(schedule="constant", eval_every=100, save_every=100)  # no step depends on the end
    whole = config(micro_model, topics_dataset, tmp_path / "whole", max_steps=8, **steps)
    _train_in_a_new_process(whole)
    part = config(micro_model, topics_dataset, tmp_path / "part", max_steps=4, **steps)
    _train_in_a_new_process(part)
    _train_in_a_new_process(replace(part, max_steps=8), resume=True)
    wa, wb = weights(whole.out), weights(part.out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_is_merged_into_a_plain_model(micro_model, topics_dataset, tmp_path, recwarn):
    run = train(
        config(micro_model, topics_dataset, tmp_path / "lora", lora=True, learning_rate=1e-2)
    ).run
    # a normal run says nothing on stderr (peft and transformers warned about GPT-2's layers)
    assert [str(w.message) for w in recwarn] == []
    files = {p.name for p in (run / "model").iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    base = load_file(Path(micro_model) / "model.safetensors")
    tuned = weights(run)
    assert set(tuned) == set(base)
    assert not torch.equal(
        tuned["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"]
    )
    assert torch.equal(tuned["transformer.wte.weight"], base["transformer.wte.weight"])


def test_frozen_layers_do_not_move(micro_model, topics_dataset, tmp_path):
    run = train(config(micro_model, topics_dataset, tmp_path / "frozen", freeze_layers=1)).run
    base, tuned = load_file(Path(micro_model) / "model.safetensors"), weights(run)
    assert torch.equal(
        tuned["transformer.h.0.mlp.c_fc.weight"], base["transformer.h.0.mlp.c_fc.weight"]
    )
    assert not torch.equal(
        tuned["transformer.h.1.mlp.c_fc.weight"], base["transformer.h.1.mlp.c_fc.weight"]
    )


def test_empty_dataset(micro_model, tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("")
    with pytest.raises(EvalkitError, match="no training example"):
        train(config(micro_model, data, tmp_path / "run"))


def test_every_example_too_long(micro_model, topics_dataset, tmp_path):
    with pytest.raises(EvalkitError, match="longer than max_length 4") as info:
        train(config(micro_model, topics_dataset, tmp_path / "run", max_length=4))
    assert "--truncate" in info.value.hint


def test_base_without_chat_template(model_without_template, topics_dataset, tmp_path):
    with pytest.raises(EvalkitError, match="no chat template"):
        train(config(model_without_template, topics_dataset, tmp_path / "run"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(micro_model, topics_dataset, tmp_path):
    with pytest.raises(EvalkitError, match="the loss became nan") as info:
        train(
            config(
                micro_model,
                topics_dataset,
                tmp_path / "run",
                learning_rate=1e6,
                warmup_steps=1,
                save_every=1,
            )
        )
    # The step-1 update already blows the weights up; step 2's loss is NaN.
    assert "at step 2" in str(info.value)
    assert str(tmp_path / "run" / "checkpoints" / "step-1") in info.value.hint
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-1"]


@pytest.mark.parametrize(
    "full",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        # what torch.save itself raises when the disk fills mid-file
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
    ],
)
def test_full_disk_leaves_no_broken_checkpoint(
    micro_model, topics_dataset, tmp_path, monkeypatch, full
):
    calls = {"n": 0}
    real_save = torch.save

    def save(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 5:  # the first checkpoint (5 files) fits, the next does not
            raise full
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(EvalkitError, match=r"cannot write .*step-4.* MiB free") as info:
        train(config(micro_model, topics_dataset, run))
    assert (full.strerror if isinstance(full, OSError) else str(full)) in str(info.value)
    assert "resume" in info.value.hint
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"]
    assert len(list((run / "checkpoints" / "step-2").iterdir())) == 5


def test_a_run_directory_is_not_overwritten(micro_model, topics_dataset, tmp_path):
    train(config(micro_model, topics_dataset, tmp_path / "run", max_steps=1))
    with pytest.raises(EvalkitError, match="already holds a run"):
        train(config(micro_model, topics_dataset, tmp_path / "run", max_steps=1))


def test_config_file_and_typos(micro_model, topics_dataset, tmp_path, capsys):
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        f'base = "{micro_model}"\ndata = "{topics_dataset}"\nmax_steps = 2\n'
        "batch_size = 4\nlearning_rate = 0.002\n"
    )
    assert main(["finetune", "train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["learning_rate"] == 0.002 and saved["max_steps"] == 2
    cfg.write_text("learning_rat = 0.1\n")
    assert main(["finetune", "train", "--config", str(cfg), "--out", str(tmp_path / "s")]) == 2
    assert "did you mean: learning_rate?" in capsys.readouterr().err


def test_two_processes_match_one_with_the_same_global_batch(micro_model, topics_dataset, tmp_path):
    one = train(
        config(micro_model, topics_dataset, tmp_path / "one", batch_size=4, max_steps=4)
    ).run
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    command = [*launcher, *cli_args(micro_model, topics_dataset, tmp_path / "two", 4, 2)]
    command += ["--device", "cpu"]
    done = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run: ") == 1, done.stdout  # rank 0 reports, once
    wa, wb = weights(one), weights(tmp_path / "two")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_early_stopping_after_patience_evaluations(micro_model, topics_dataset, tmp_path):
    # A zero learning rate never improves on the first evaluation.
    cfg = config(
        micro_model,
        topics_dataset,
        tmp_path / "run",
        max_steps=12,
        eval_every=2,
        patience=2,
        learning_rate=0.0,
    )
    run = train(cfg).run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["best_step"] == 2
    # Resuming a run whose patience is spent trains no further step.
    train(cfg, resume=True)
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_a_bf16_base_trains_float32_weights(micro_model, topics_dataset, tmp_path):
    base = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(micro_model).to(torch.bfloat16).save_pretrained(base)
    for f in Path(micro_model).iterdir():
        if not (base / f.name).exists():
            (base / f.name).write_bytes(f.read_bytes())
    before = load_file(base / "model.safetensors")
    assert before["transformer.h.0.mlp.c_fc.weight"].dtype == torch.bfloat16
    # One small step moves every weight of a block by about the learning rate: far below
    # bf16's resolution for most of them, so they only move when training in float32.
    cfg = config(base, topics_dataset, tmp_path / "run", max_steps=1, warmup_steps=0)
    run = train(replace(cfg, learning_rate=1e-5)).run
    after = weights(run)["transformer.h.0.mlp.c_fc.weight"]
    assert after.dtype == torch.float32
    moved = (after != before["transformer.h.0.mlp.c_fc.weight"].float()).float().mean()
    assert moved > 0.99


def test_the_logged_learning_rate_is_the_one_each_step_used(micro_model, topics_dataset, tmp_path):
    run = train(
        config(micro_model, topics_dataset, tmp_path / "run", max_steps=3, warmup_steps=2)
    ).run
    logged = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    lr = TrainConfig.learning_rate
    assert logged[:2] == [pytest.approx(lr / 2), pytest.approx(lr)]


def test_a_crashed_run_resumes_without_repeated_metrics(micro_model, topics_dataset, tmp_path):
    cfg = config(micro_model, topics_dataset, tmp_path / "run")
    run = train(cfg).run
    # As if killed after step 5, its last checkpoint at step 4.
    shutil.rmtree(run / "checkpoints" / "step-6")
    (run / "summary.json").unlink()
    train(cfg, resume=True)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(patience=0), "patience must be at least 1"),
        (dict(max_length=10_000), "longer than the model's context"),
    ],
)
def test_bad_options(micro_model, topics_dataset, tmp_path, change, message):
    with pytest.raises(EvalkitError, match=message):
        train(config(micro_model, topics_dataset, tmp_path / "run", **change))


def test_records_without_messages(micro_model, topics_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(topics_dataset, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join([lines[0], '{"text": "hi"}', *lines[1:]]) + "\n")
    with pytest.raises(EvalkitError, match=r"train\.jsonl: record 2 has no list of messages"):
        train(config(micro_model, data, tmp_path / "run", allow_modified=True))


def test_a_modified_dataset_is_refused_unless_allowed(micro_model, topics_dataset, tmp_path):
    from evalkit.provenance import LINEAGE_FILE, sha256_file

    data = tmp_path / "data"
    shutil.copytree(topics_dataset, data)
    lines = (data / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join([*lines, lines[0]]))  # one line appended
    with pytest.raises(EvalkitError, match=r"train\.jsonl changed since preparation") as info:
        train(config(micro_model, data, tmp_path / "refused"))
    assert "--allow-modified" in info.value.hint
    assert not (tmp_path / "refused").exists()
    run = train(config(micro_model, data, tmp_path / "run", allow_modified=True)).run
    lineage = json.loads((run / "model" / LINEAGE_FILE).read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    assert lineage["modified_files"] == ["train.jsonl"]
    assert lineage["files"]["train.jsonl"] == sha256_file(data / "train.jsonl")
    assert lineage["files"]["train.jsonl"] != manifest["files"]["train.jsonl"]
    assert lineage["files"]["test.jsonl"] == manifest["files"]["test.jsonl"]
    assert lineage["dataset_hash"] == manifest["dataset_hash"]
    assert json.loads((run / "summary.json").read_text())["modified_files"] == ["train.jsonl"]
    # The command line has the switch.
    assert main(["finetune", "train", "--base", str(micro_model), "--data", str(data),
                 "--out", str(tmp_path / "cli"), "--max-steps", "1", "--batch-size", "4",
                 "--allow-modified"]) == 0  # fmt: skip


def _lengths(micro_model, data) -> list[int]:
    """Tokens per training conversation, rendered with the model's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    return [len(tokenizer.apply_chat_template(r["messages"], return_dict=False)) for r in records]


def test_the_terminal_says_what_was_left_out(micro_model, topics_dataset, tmp_path, capsys):
    lengths = sorted(_lengths(micro_model, topics_dataset))
    max_length = lengths[len(lengths) // 2]
    left_out = sum(n > max_length for n in lengths)
    assert left_out > 0.1 * len(lengths)
    capsys.readouterr()
    assert main(["finetune", "train", "--base", str(micro_model), "--data", str(topics_dataset),
                 "--out", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4",
                 "--max-length", str(max_length)]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    context = AutoModelForCausalLM.from_pretrained(micro_model).config.max_position_embeddings
    assert out[1] == (
        f"warning: left out {left_out} of {len(lengths)} training conversations "
        f"({left_out / len(lengths):.0%}) longer than max_length {max_length}: raise "
        f"--max-length (up to the model's context, {context}), or pass --truncate to cut "
        "them instead"
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["left_out_too_long"] == left_out


@pytest.mark.parametrize(
    ("left_out", "max_length", "truncate", "line"),
    [
        (0, 64, False, None),
        (10, 32, False, "left out 10 of 100 training conversations (10%) longer than max_length "
                        "32: raise --max-length (up to the model's context, 64), or pass "
                        "--truncate to cut them instead"),
        (11, 64, False, "\033[1mwarning: left out 11 of 100 training conversations (11%) longer "
                        "than max_length 64: pass --truncate to cut them instead\033[0m"),
        (30, 64, True, "cut 30 of 100 training conversations longer than max_length 64 "
                       "(--truncate)"),
    ],
)  # fmt: skip
def test_left_out_past_a_tenth_is_a_bold_warning(left_out, max_length, truncate, line):
    from finetune.train import TrainResult

    summary = {
        "steps": 5,
        "best_val_loss": None,
        "train_examples": 100 - (0 if truncate else left_out),
        "left_out_too_long": left_out,
        "left_out_no_target": 0,
        "max_length": max_length,
        "context_length": 64,
        "truncate": truncate,
    }
    lines = TrainResult(Path("run"), summary).describe(bold=True).splitlines()
    assert lines[1:] == ([line] if line else [])
