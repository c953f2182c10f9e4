"""Supervised fine-tuning of a chat model on a prepared dataset directory.

One loop, read top to bottom: load the model and the data, pack conversations into rows,
train with AdamW and a warm-up + decay schedule, evaluate every ``eval_every`` steps, keep the
best model, stop early, checkpoint often. The same code runs on the CPU, on CUDA (bf16
autocast) and under ``torchrun`` with DDP; AdamW is PyTorch's fused one on both devices.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``model/`` (the
final weights, Hugging Face format), ``best/`` (the best by validation loss) and ``README.md``
(the model card).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from evalkit.distributed import start
from evalkit.errors import EvalkitError, check_keys
from evalkit.provenance import LINEAGE_FILE
from evalkit.workspace import atomic_dir

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant")
# Past this share of the training conversations left out, the terminal line is a bold warning.
LEFT_OUT_WARNING = 0.10
# What a failed checkpoint or model write says: the run goes on from its last checkpoint.
RESUME_HINT = "free disk space; the previous checkpoint is intact, resume with --resume"

KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _fits(value, kind: type) -> bool:
    """Whether a config value is of its field's type (a whole number is a number, a bool not)."""
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as the run's ``config.json``."""

    base: str = ""  # model directory (Hugging Face format, with a chat template)
    data: str = ""  # dataset directory from `evalkit data prepare`
    out: str = ""  # run directory
    # what to learn
    assistant_only: bool = True  # loss on the assistant's tokens only
    packing: bool = True
    max_length: int | None = None  # None: the model's context length
    truncate: bool = False  # cut conversations over max_length instead of leaving them out
    # train on split files that differ from the manifest's hashes (named in the lineage)
    allow_modified: bool = False
    # how
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    freeze_layers: int = 0  # freeze the embeddings and this many first blocks (full tuning)
    learning_rate: float = 1e-3  # suits the small embedded model; large models want ~1e-5
    schedule: str = "cosine"
    warmup_steps: int = 10
    batch_size: int = 8  # rows per process per micro-step
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    weight_decay: float = 0.0
    dropout: float | None = None  # None: keep the model's own
    seed: int = 0
    # when
    eval_every: int = 50
    patience: int | None = None  # evaluations without improvement before stopping
    save_every: int = 100
    log_every: int = 10
    device: str | None = None
    fast: bool | None = None  # speedups (evalkit.accel); None: on unless EVALKIT_FAST=0

    def __post_init__(self) -> None:
        types = option_types()
        for f in fields(self):
            value, kind = getattr(self, f.name), types[f.name]
            if value is None and f.default is None:
                continue  # unset: the default's meaning (see the field's comment)
            if not _fits(value, kind):
                example = (
                    f"e.g. {f.name} = {json.dumps(f.default)}" if f.default is not None else ""
                )
                raise EvalkitError(f"{f.name} {value!r}: expected {KIND_NAMES[kind]}", hint=example)
        limits = {  # (lowest, whether the lowest itself is allowed, a bound to stay below)
            "learning_rate": (0, True, None),  # 0 trains nothing, as torch allows: a baseline
            "epochs": (0, False, None),
            "lora_alpha": (0, False, None),
            "lora_r": (1, True, None),
            "max_length": (1, True, None),
            "warmup_steps": (0, True, None),
            "weight_decay": (0, True, None),
            "freeze_layers": (0, True, None),
            "lora_dropout": (0, True, 1),
            "dropout": (0, True, 1),
        }
        for name, (low, inclusive, high) in limits.items():
            value = getattr(self, name)
            if value is None:
                continue
            above = value >= low if inclusive else value > low
            if not (above and math.isfinite(value) and (high is None or value < high)):
                bound = f"at least {low}" if inclusive else f"above {low}"
                raise EvalkitError(
                    f"{name} {value!r}: must be {bound}" + (f" and below {high}" if high else "")
                )
        if self.schedule not in SCHEDULES:
            raise EvalkitError(f"unknown schedule {self.schedule!r}: use {', '.join(SCHEDULES)}")
        for name in ("batch_size", "grad_accum", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise EvalkitError(f"{name} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise EvalkitError("max_steps must be at least 1")
        if self.patience is not None and self.patience < 1:
            raise EvalkitError("patience must be at least 1 evaluation (or unset: no early stop)")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a TOML or JSON config; ``overrides`` (e.g. from the command line) win."""
        path = Path(path)
        try:
            text = path.read_text()
            if path.suffix == ".toml":
                import tomllib

                values = tomllib.loads(text)
            else:
                values = json.loads(text)
        except (OSError, ValueError) as exc:
            raise EvalkitError(f"cannot read config {path}: {exc}") from exc
        check_keys(values, [f.name for f in fields(cls)], what="option", where=str(path))
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def option_types() -> dict[str, type]:
    """Each TrainConfig field's value type (bool, int, float or str), read from its annotation:
    what the command line and a sweep parse an option's text into."""
    import typing

    types = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        types[name] = args[0] if args else hint
    return types


@dataclass(frozen=True)
class TrainResult:
    """What a finished run gives back: its directory and its ``summary.json``."""

    run: Path
    summary: dict
    rank: int = 0  # this process's under torchrun: every process returns, rank 0 reports

    def describe(self, *, bold: bool = False) -> str:
        """For the terminal: the run, its steps, its best validation perplexity, and how many
        training conversations were left out or cut, with what to do about it; past
        ``LEFT_OUT_WARNING`` of them left out, a warning (in bold with ``bold``)."""
        s = self.summary
        ppl = (
            f", best validation perplexity {math.exp(s['best_val_loss']):.2f}"
            if s["best_val_loss"] is not None
            else ""
        )
        lines = [f"run: {self.run} ({s['steps']} steps{ppl}); model: {self.run / 'model'}"]
        too_long, no_target = s["left_out_too_long"], s["left_out_no_target"]
        total = s["train_examples"] + no_target + (0 if s["truncate"] else too_long)
        longer = f"longer than max_length {s['max_length']}"
        if too_long and s["truncate"]:
            lines.append(f"cut {too_long} of {total} training conversations {longer} (--truncate)")
        elif too_long:
            raise_it = (
                f"raise --max-length (up to the model's context, {s['context_length']}), or "
                if s["max_length"] < s["context_length"]
                else ""
            )
            lines.append(
                f"left out {too_long} of {total} training conversations ({too_long / total:.0%}) "
                f"{longer}: {raise_it}pass --truncate to cut them instead"
            )
            if too_long / total > LEFT_OUT_WARNING:
                lines[-1] = "warning: " + lines[-1]
                if bold:
                    lines[-1] = f"\033[1m{lines[-1]}\033[0m"
        if no_target:
            lines.append(f"left out {no_target} training conversations with no token to learn from")
        return "\n".join(lines)


class Stopped(EvalkitError):
    """A run stopped by a signal, after checkpointing: ``--resume`` continues it."""

    def __init__(self, message: str, *, hint: str, signal: int) -> None:
        super().__init__(message, hint=hint)
        self.signal = signal


class StopOnSignal:
    """Set by SIGTERM/SIGINT; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _read_split(data: Path, split: str) -> list[list[dict]]:
    from finetune.data.corpora import read_jsonl

    path = data / f"{split}.jsonl"
    if not path.is_file():
        raise EvalkitError(
            f"{data} has no {split}.jsonl", hint="pass a directory from `evalkit data prepare`"
        )
    records = read_jsonl(path)
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
            raise EvalkitError(
                f"{path}: record {number} has no list of messages",
                hint="pass a directory from `evalkit data prepare`",
            )
    return [r["messages"] for r in records]


def _manifest(data: Path) -> dict:
    """A dataset directory's manifest.json; {} where there is none (not from data prepare)."""
    path = data / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvalkitError(
            f"cannot read {path}: {exc}", hint="prepare the dataset again (`evalkit data prepare`)"
        ) from exc


def _lr_lambda(cfg: TrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return 1 - progress
        return 1.0

    return factor


def _set_dropout(model, p: float) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def _freeze(model, n_layers: int) -> None:
    """Freeze the input embeddings and the first ``n_layers`` transformer blocks."""
    model.get_input_embeddings().requires_grad_(False)
    blocks = next(
        (m for m in model.modules() if m.__class__.__name__ == "ModuleList" and len(m) > 0), None
    )
    if blocks is None or n_layers > len(blocks):
        raise EvalkitError(f"cannot freeze {n_layers} layers: the model has fewer blocks")
    for block in blocks[:n_layers]:
        block.requires_grad_(False)


def _to(device, batch: dict) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _save_model(model, tokenizer, lora: bool, path: Path, lineage: dict) -> None:
    """A plain Hugging Face model directory; LoRA adapters merged into a copy of the model.

    ``evalkit_lineage.json`` beside the weights names the training run and dataset it came
    from (not part of the model hash), so an evaluation can trace the model back.
    """
    import copy

    def write(tmp: Path) -> None:
        plain = copy.deepcopy(model).merge_and_unload() if lora else model
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")

    atomic_dir(path, write, hint=RESUME_HINT)


def _rng_state() -> dict:
    import numpy as np
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _latest_checkpoint(run: Path) -> Path | None:
    found = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    return found[-1] if found else None


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Fine-tune ``config.base`` on ``config.data`` into the run directory ``config.out``.

    >>> train(TrainConfig(base="base-model", data="dataset", out="runs/r1", max_steps=100))
    """
    import numpy as np
    import torch

    from evalkit import accel
    from evalkit.accel.loss import fast_loss
    from evalkit.models import load_model
    from evalkit.provenance import chat_template_fingerprint, model_hash
    from finetune.data.manifest import modified_files, split_hashes
    from finetune.loss import TargetNLL
    from finetune.packing import collate, encode, pack

    # MKL's results depend on how its buffers happen to be aligned unless it runs in its
    # reproducible mode, which it reads from the environment at its first call: set before any
    # computation, so a run resumed in a new process ends with the weights of an uninterrupted
    # run, whether train() is called from the CLI or from Python.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

    cfg = config
    run, data = Path(cfg.out), Path(cfg.data)
    if resume:
        saved = run / "config.json"
        if not saved.is_file():
            raise EvalkitError(f"nothing to resume in {run}: no config.json")
        previous = json.loads(saved.read_text())
        changed = [k for k, v in asdict(cfg).items() if previous.get(k) != v and k != "max_steps"]
        if changed:
            raise EvalkitError(
                f"--resume with different options: {', '.join(changed)}",
                hint="resume with the options of the run, or start a new run directory",
            )
    elif (run / "config.json").exists():
        raise EvalkitError(
            f"run directory {run} already holds a run", hint="use --resume or another --out"
        )
    # Checked before anything is loaded: the manifest must describe the files trained on.
    manifest, files = _manifest(data), split_hashes(data)
    modified = modified_files(manifest, files)
    if modified and not cfg.allow_modified:
        raise EvalkitError(
            f"{data}: {', '.join(modified)} changed since preparation "
            "(not the hashes in manifest.json), so the manifest does not describe them",
            hint="prepare the dataset again, or pass --allow-modified to train on the files "
            "as they are (the model's lineage names them)",
        )
    shard, device = start(cfg.device)  # torchrun's processes, as evaluation starts them
    rank, world = shard.rank, shard.world
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    model, tokenizer = load_model(cfg.base, device="cpu")
    # The weights train in float32, whatever the checkpoint's dtype: most updates to bf16
    # weights would round away. CUDA computes in bf16 under autocast.
    model.float()
    base_hash = model_hash(cfg.base)
    context = model.config.max_position_embeddings
    max_length = cfg.max_length or context
    if max_length > context:
        raise EvalkitError(
            f"max_length {max_length} is longer than the model's context ({context} tokens)",
            hint=f"pass --max-length {context} or less",
        )
    dataset_hash = manifest.get("dataset_hash")
    lineage = {
        "training_run": str(run.resolve()),
        "dataset": str(data.resolve()),
        "dataset_hash": dataset_hash,
        "files": files,  # the split files trained on, as they were
        "modified_files": modified,  # differing from the manifest (--allow-modified)
        "base_model": str(Path(cfg.base).resolve()),
        "base_model_hash": base_hash,
    }
    splits = {}
    for split in ("train", "validation"):
        splits[split] = encode(
            tokenizer,
            _read_split(data, split),
            max_length=max_length,
            assistant_only=cfg.assistant_only,
            truncate=cfg.truncate,
        )
    train_set, val_set = splits["train"], splits["validation"]
    if not train_set.input_ids:
        reason = (
            f"all {train_set.too_long} are longer than max_length {max_length}"
            if train_set.too_long
            else "it is empty or has nothing to learn from"
        )
        raise EvalkitError(
            f"no training example in {data / 'train.jsonl'}: {reason}",
            hint="raise --max-length, pass --truncate, or prepare more data",
        )

    def rows_of(encoded):
        lengths = [len(x) for x in encoded.input_ids]
        return pack(lengths, max_length) if cfg.packing else [[i] for i in range(len(lengths))]

    train_rows, val_rows = rows_of(train_set), rows_of(val_set)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = len(train_rows) // global_batch
    if steps_per_epoch == 0:
        raise EvalkitError(
            f"{len(train_rows)} packed rows are fewer than one global batch ({global_batch})",
            hint="lower --batch-size or --grad-accum, or prepare more data",
        )
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    tokens_in_rows = sum(len(train_set.input_ids[i]) for row in train_rows for i in row)
    padding = 1 - tokens_in_rows / (len(train_rows) * max_length) if cfg.packing else None

    if cfg.dropout is not None:
        _set_dropout(model, cfg.dropout)
    if cfg.lora:
        import warnings

        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D

        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            # GPT-2's layers store their weights transposed (Conv1D): say so, as peft expects
            fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
        )
        with warnings.catch_warnings():
            # peft reads a property that transformers renamed (peft's to update, harmless)
            warnings.filterwarnings(
                "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
            )
            model = get_peft_model(model, lora)
    elif cfg.freeze_layers:
        _freeze(model, cfg.freeze_layers)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
        # One kernel over all parameters, on the CPU too: much faster than the per-tensor loop.
        fused=device.type in ("cuda", "cpu"),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total_steps))
    pad_id = tokenizer.pad_token_id or 0
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    state = {"step": 0, "best_loss": math.inf, "best_step": None, "stale_evals": 0}

    def patience_spent() -> bool:
        return cfg.patience is not None and state["stale_evals"] >= cfg.patience

    if resume and (checkpoint := _latest_checkpoint(run)):
        model.load_state_dict(torch.load(checkpoint / "model.pt", map_location=device))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt"))
        state = json.loads((checkpoint / "state.json").read_text())
        _set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=False))
        log.info("resumed from %s", checkpoint)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        metrics = run / "metrics.jsonl"
        if metrics.exists():  # steps after the checkpoint run again: their lines go
            lines = metrics.read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= state["step"]]
            metrics.write_text("".join(line + "\n" for line in kept))

    def evaluate() -> float:
        model.eval()
        nll, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(val_rows), cfg.batch_size):
                batch = collate(val_set, val_rows[start : start + cfg.batch_size], pad_id)
                with autocast():
                    s, n = objective(**_to(device, batch))
                nll, count = nll + s.item(), count + n.item()
        model.train()
        return nll / count if count else math.nan

    def checkpoint_now() -> None:
        if rank != 0:
            return

        def write(tmp: Path) -> None:
            torch.save(model.state_dict(), tmp / "model.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(_rng_state(), tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps(state))

        atomic_dir(run / "checkpoints" / f"step-{state['step']}", write, hint=RESUME_HINT)
        for old in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))[:-2]:
            shutil.rmtree(old)

    def rows_for_step(step: int) -> list[list[int]]:
        """This process's rows for a step: the data order is a function of the step alone."""
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(
            len(train_rows), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        ).tolist()
        chunk = order[index * global_batch : (index + 1) * global_batch]
        return [train_rows[i] for i in chunk[rank::world]]

    from tqdm.auto import tqdm

    model.train()
    stopped_by = None
    window_tokens, window_start = 0, time.perf_counter()
    plain = TargetNLL(model)
    if accel.enabled(cfg.fast):  # speedups checked on the first batch against the plain loss
        first = _to(device, collate(train_set, rows_for_step(0)[:: cfg.grad_accum], pad_id))
        loss = fast_loss(plain, first, autocast, bf16)
    else:
        loss = contextlib.nullcontext(plain)
    with StopOnSignal() as stop, loss as objective:
        trained = objective if world == 1 else torch.nn.parallel.DistributedDataParallel(objective)
        bar = tqdm(
            total=total_steps,
            initial=state["step"],
            desc="fine-tuning",
            disable=None if rank == 0 else True,
        )
        while state["step"] < total_steps and not patience_spent():
            step = state["step"]
            mine = rows_for_step(step)
            micro = [mine[i :: cfg.grad_accum] for i in range(cfg.grad_accum)]
            batches = [collate(train_set, rows, pad_id) for rows in micro]
            # Normalize by the target tokens of the whole global batch, so one process and N
            # processes (and any accumulation) give the same gradient.
            count = torch.tensor(
                float(sum((b["labels"][:, 1:] != -100).sum() for b in batches)), device=device
            )
            if world > 1:
                torch.distributed.all_reduce(count)
            total_nll = 0.0
            for k, batch in enumerate(batches):
                sync = k == len(batches) - 1 or world == 1
                gradients = trained.no_sync() if not sync else contextlib.nullcontext()
                with gradients:
                    with autocast():
                        nll, _ = trained(**_to(device, batch))
                    (nll * world / count).backward()
                total_nll += nll.item()
            if world > 1:
                summed = torch.tensor(total_nll, device=device)
                torch.distributed.all_reduce(summed)
                total_nll = summed.item()
            loss = total_nll / count.item()
            if not math.isfinite(loss):
                last = _latest_checkpoint(run)
                raise EvalkitError(
                    f"the loss became {loss} at step {step + 1}",
                    hint="start a new run (another --out) with a lower --learning-rate"
                    + (f"; the last checkpoint with a finite loss is {last}" if last else ""),
                )
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # this step's
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step + 1
            # non-padding tokens, counted on this process, times the processes
            window_tokens += world * sum(len(train_set.input_ids[i]) for row in mine for i in row)
            bar.update(1)
            record = None
            if state["step"] % cfg.log_every == 0 or state["step"] == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": state["step"],
                    "loss": round(loss, 5),
                    "lr": lr,
                    "tokens_per_s": round(window_tokens / elapsed, 1),
                }
                window_tokens, window_start = 0, time.perf_counter()
            if val_rows and (state["step"] % cfg.eval_every == 0 or state["step"] == total_steps):
                val_loss = evaluate()
                record = (record or {"step": state["step"]}) | {
                    "val_loss": round(val_loss, 5),
                    "val_ppl": round(math.exp(val_loss), 4),
                }
                if val_loss < state["best_loss"]:
                    state.update(best_loss=val_loss, best_step=state["step"], stale_evals=0)
                    if rank == 0:
                        _save_model(model, tokenizer, cfg.lora, run / "best", lineage)
                else:
                    state["stale_evals"] += 1
            if record and rank == 0:
                with open(run / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            early = patience_spent()
            stopping = stop.signal  # read once: a signal arriving now waits for the next step
            if world > 1:  # every process stops at the same step, whichever got the signal
                flag = torch.tensor(stopping or 0, device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stopping = int(flag.item()) or None
            if stopping or early or state["step"] % cfg.save_every == 0:
                checkpoint_now()
            if stopping:
                stopped_by = signal.Signals(stopping)
                break
            if early:
                log.info("early stop at step %d", state["step"])
                break
        bar.close()
    if stopped_by:
        raise Stopped(
            f"stopped by {stopped_by.name} at step {state['step']}; checkpoint saved in {run}",
            hint="continue with the same command and --resume",
            signal=int(stopped_by),
        )
    if rank == 0:
        checkpoint_now()
        _save_model(model, tokenizer, cfg.lora, run / "model", lineage)
        summary = {
            "base_model_hash": base_hash,
            "dataset_hash": dataset_hash,
            "modified_files": modified,
            "chat_template_fingerprint": chat_template_fingerprint(tokenizer),
            "model_hash": model_hash(run / "model"),
            "steps": state["step"],
            "best_step": state["best_step"],
            "best_val_loss": state["best_loss"] if math.isfinite(state["best_loss"]) else None,
            "train_examples": len(train_set.input_ids),
            "max_length": max_length,
            "context_length": context,
            "truncate": cfg.truncate,
            "left_out_too_long": train_set.too_long,
            "left_out_no_target": train_set.no_target,
            "packed_rows": len(train_rows),
            "padding_fraction": round(padding, 4) if padding is not None else None,
            "processes": world,
        }
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (run / "README.md").write_text(_model_card(cfg, summary))
    if world > 1:
        torch.distributed.barrier()
    return TrainResult(run, json.loads((run / "summary.json").read_text()), rank)


def _model_card(cfg: TrainConfig, summary: dict) -> str:
    best = summary["best_val_loss"]
    ppl = f"{math.exp(best):.3f} (step {summary['best_step']})" if best is not None else "n/a"
    hyper = "\n".join(f"| {k} | {v} |" for k, v in asdict(cfg).items())
    return f"""# Fine-tuned chat model

Fine-tuned from `{cfg.base}` on `{cfg.data}` with evalkit.

| | |
|---|---|
| base model hash | `{summary["base_model_hash"]}` |
| dataset manifest hash | `{summary["dataset_hash"]}` |
| chat-template fingerprint | `{summary["chat_template_fingerprint"]}` |
| model hash (`model/`) | `{summary["model_hash"]}` |
| method | {"LoRA (merged)" if cfg.lora else "full fine-tuning"} |
| steps | {summary["steps"]} |
| best validation perplexity | {ppl} |
| training examples | {summary["train_examples"]} ({summary["left_out_too_long"]} too long) |
| padding fraction | {summary["padding_fraction"]} |

`model/` holds the final weights, `best/` the weights with the lowest validation loss.

## Hyperparameters

| option | value |
|---|---|
{hyper}
"""
