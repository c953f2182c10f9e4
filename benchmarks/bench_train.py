"""Fine-tuning throughput: evalkit's trainer against TRL's SFTTrainer, same model, same data.

Both train one epoch over the same training split (chit-chat conversations that fit in 256
tokens, so neither truncates nor drops anything) with assistant-only loss, batch 8, max length
256, AdamW at the same learning rate and cosine schedule. Reported: non-padding tokens per
second of the training loop, the validation loss (assistant tokens) of both final models
measured by the same function, and the fraction of the machine's fp32 matmul rate used
(6 x parameters x tokens/s over the rate measured here).

TRL runs in each of ``--trl-modes``, and the ratio is taken against its fastest:

- ``defaults``: SFTConfig as it comes (in TRL 1.16: bf16 autocast and gradient checkpointing);
  bf16 is fast where the CPU has bf16 matmul units (AMX), very slow where it has not (AVX2);
- ``fp32``: float32 without gradient checkpointing, as evalkit trains.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/bench_train.py [--base MODEL_DIR] [--data DATASET_DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as the CLI runs training

import torch
from summary import emit, size

LR, BATCH, WARMUP, SEED = 1e-3, 8, 10, 0
MAX_LENGTH = size(256, 64)  # the micro model of QUICK=1 has a context of 64


def matmul_gflops(n: int = 2048, repeat: int = 30) -> float:
    """The best fp32 matrix-multiply rate of this machine, in GFLOP/s.

    Measured before and after evalkit's run, the higher kept: a VM's speed drifts by 10-20%
    over minutes, and the higher rate gives the lower (conservative) fraction.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def validation_loss(model_dir: Path, data: Path) -> float:
    """Mean assistant-token NLL of a model on the validation split, one conversation a row,
    from the model's full logits."""
    from evalkit.models import load_model
    from finetune.loss import TargetNLL
    from finetune.packing import collate, encode
    from finetune.train import _read_split

    model, tokenizer = load_model(model_dir, device="cpu")
    nll_of = TargetNLL(model)
    enc = encode(tokenizer, _read_split(data, "validation"), max_length=MAX_LENGTH)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(enc.input_ids), 16):
            rows = [[i] for i in range(start, min(start + 16, len(enc.input_ids)))]
            s, n = nll_of(**collate(enc, rows, tokenizer.pad_token_id))
            nll, count = nll + s.item(), count + n.item()
    return nll / count


def run_evalkit(base: str, data: Path, out: Path) -> tuple[float, Path]:
    from finetune.train import TrainConfig, train

    run = train(
        TrainConfig(
            base=base,
            data=str(data),
            out=str(out),
            learning_rate=LR,
            batch_size=BATCH,
            max_length=MAX_LENGTH,
            warmup_steps=WARMUP,
            epochs=1,
            eval_every=10**9,
            log_every=size(5, 1),  # QUICK=1 trains a few steps only
            seed=SEED,
        )
    ).run
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(x)["tokens_per_s"] for x in lines]
    return sum(rates[1:]) / len(rates[1:]), run / "model"  # the first window holds warm-up


# SFTConfig settings of each TRL mode, over what both trainers share.
TRL_MODES = {"defaults": {}, "fp32": {"bf16": False, "gradient_checkpointing": False}}


def run_trl(base: str, data: Path, out: Path, tokens: int, mode: str) -> tuple[float, Path]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from finetune.train import _read_split

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    train_set = Dataset.from_list([{"messages": m} for m in _read_split(data, "train")])
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_length=MAX_LENGTH,
        assistant_only_loss=True,
        packing=False,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,
        num_train_epochs=1,
        weight_decay=0.0,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=SEED,
        dataloader_num_workers=0,
        **TRL_MODES[mode],
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_set, processing_class=tokenizer
    )
    metrics = trainer.train().metrics
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(out / "model")
    return tokens / metrics["train_runtime"], out / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model (default: the embedded default, built once)")
    parser.add_argument("--data", help="dataset directory (default: chit-chat within 256 tokens)")
    parser.add_argument(
        "--trl-modes",
        default=size(",".join(TRL_MODES), "fp32"),
        help=f"TRL configurations to run, comma-separated, of: {', '.join(TRL_MODES)}",
    )
    args = parser.parse_args()
    modes = args.trl_modes.split(",")
    if not modes or set(modes) - set(TRL_MODES):
        parser.error(f"--trl-modes: a comma-separated list of {', '.join(TRL_MODES)}")
    from evalkit.workspace import open_workspace, write_jsonl
    from finetune.base_model import build_base_model, read_metadata
    from finetune.data.corpora import load_chitchat
    from finetune.data.prepare import PrepareConfig, prepare
    from finetune.packing import encode
    from finetune.train import _read_split

    ws = open_workspace()
    base = args.base or str(build_base_model(ws, size("default", "micro")))
    data = (
        Path(args.data)
        if args.data
        else ws.datasets_dir / size("bench-chitchat-256", "bench-quick-64")
    )
    if not args.data and not (data / "manifest.json").exists():
        write_jsonl(load_chitchat()[: size(None, 3000)], ws.datasets_dir / "raw" / "chitchat.jsonl")
        prepare(
            [ws.datasets_dir / "raw" / "chitchat.jsonl"],
            data,
            PrepareConfig(model=base, max_tokens=MAX_LENGTH),
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokens = sum(
        map(len, encode(tokenizer, _read_split(data, "train"), max_length=MAX_LENGTH).input_ids)
    )
    params = read_metadata(base)["parameters"] if not args.base else None
    if params is None:
        from transformers import AutoModelForCausalLM

        params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
    before = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        ours, our_model = run_evalkit(base, data, Path(tmp) / "evalkit")
        gflops = max(before, matmul_gflops())
        rows = [("evalkit (packed)", ours, validation_loss(our_model, data))]
        for mode in modes:
            rate, model = run_trl(base, data, Path(tmp) / f"trl-{mode}", tokens, mode)
            rows.append((f"TRL SFTTrainer ({mode})", rate, validation_loss(model, data)))
    best = max(rows[1:], key=lambda row: row[1])
    print(f"model: {params:,} parameters; data: {tokens:,} training tokens (one epoch)")
    print(f"fp32 matmul rate: {gflops:.1f} GFLOP/s (the higher of before and after evalkit's run)")
    print(f"{'trainer':<26}{'tokens/s':>10}{'val loss':>10}{'% of matmul':>13}")
    for name, rate, loss in rows:
        print(f"{name:<26}{rate:>10,.0f}{loss:>10.4f}{6 * params * rate / gflops / 1e7:>12.1f}%")
    print(
        f"throughput ratio evalkit / TRL at its fastest, {best[0]}: {ours / best[1]:.2f}x; "
        f"validation loss difference: {rows[0][2] - best[2]:+.4f}"
    )
    emit(
        "train",
        "training tokens/s, one epoch",
        f"{ours:,.0f} tokens/s",
        best[0],
        f"{best[1]:,.0f} tokens/s",
        ours / best[1],
        f"validation loss {rows[0][2]:.4f} vs {best[2]:.4f}",
    )


if __name__ == "__main__":
    main()
