"""Hyperparameter sweeps: each trial a training run, all ranked by validation perplexity.

Methods: ``grid`` (every combination), ``random`` (a seeded sample of the grid) and ``optuna``
(its TPE sampler over the same choices). A trial whose run directory already holds a finished
run is read back, not retrained, so an interrupted sweep picks up where it stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import asdict, replace
from pathlib import Path

from evalkit.errors import EvalkitError, unknown_name
from finetune.train import TrainConfig, option_types, train

METHODS = ("grid", "random", "optuna")
_NOT_SWEPT = {"base", "data", "out", "device"}


def parse_space(specs: list[str]) -> dict[str, list]:
    """``["learning_rate=1e-3,3e-4", "lora=true,false"]`` -> typed choices per option."""
    types = option_types()
    space: dict[str, list] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values:
            raise EvalkitError(f"--param {spec!r}: expected NAME=VALUE[,VALUE...]")
        if name not in types or name in _NOT_SWEPT:
            raise unknown_name(
                "sweep option", name, set(types) - _NOT_SWEPT, where=f"--param {spec!r}"
            )
        space[name] = [_typed(v.strip(), types[name], spec) for v in values.split(",")]
    if not space:
        raise EvalkitError("nothing to sweep", hint="name options with --param NAME=V1,V2")
    return space


def _typed(value: str, kind: type, spec: str):
    try:
        if kind is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
        return kind(value)
    except ValueError:
        raise EvalkitError(f"--param {spec!r}: {value!r} is not a {kind.__name__}") from None


def _run_trial(base: TrainConfig, params: dict, out: Path, index: int) -> dict:
    run = out / f"trial-{index:03d}"
    row = {"trial": index, "run": str(run), **params}
    summary_file = run / "summary.json"
    config = replace(base, out=str(run), **params)
    saved = json.loads((run / "config.json").read_text()) if summary_file.exists() else None
    if saved is not None and saved != json.loads(json.dumps(asdict(config))):
        raise EvalkitError(
            f"{run} holds a finished trial with other options",
            hint="sweep into a new --out, or remove that trial's directory",
        )
    if not summary_file.exists():
        try:
            train(config, resume=(run / "config.json").exists())
        except EvalkitError as exc:
            return row | {"val_ppl": None, "error": str(exc).splitlines()[0]}
    loss = json.loads(summary_file.read_text())["best_val_loss"]
    return row | {"val_ppl": math.exp(loss) if loss is not None else None}


def sweep(
    base: TrainConfig,
    space: dict[str, list],
    out: str | Path,
    *,
    method: str = "grid",
    trials: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Run the trials and write ``results.json`` and ``results.md``; returns the ranked rows."""
    if method not in METHODS:
        raise EvalkitError(f"unknown sweep method {method!r}", hint=f"use {', '.join(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(space)
    grid = [dict(zip(names, combo)) for combo in itertools.product(*space.values())]
    if method == "grid":
        rows = [_run_trial(base, params, out, i) for i, params in enumerate(grid)]
    elif method == "random":
        chosen = random.Random(seed).sample(grid, min(trials or len(grid), len(grid)))
        rows = [_run_trial(base, params, out, i) for i, params in enumerate(chosen)]
    else:
        rows = _optuna(base, space, out, trials or len(grid), seed)
    rows.sort(key=lambda r: (r["val_ppl"] is None, r["val_ppl"] or 0.0, r["trial"]))
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(results_table(rows, names))
    return rows


def _optuna(base: TrainConfig, space: dict[str, list], out: Path, n: int, seed: int) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[dict] = []

    def objective(trial) -> float:
        params = {name: trial.suggest_categorical(name, choices) for name, choices in space.items()}
        row = _run_trial(base, params, out, trial.number)
        rows.append(row)
        return row["val_ppl"] if row["val_ppl"] is not None else float("inf")

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n)
    return rows


def results_table(rows: list[dict], names: list[str]) -> str:
    """The ranked trials as a markdown table."""
    header = ["rank", "trial", *names, "validation perplexity", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(rows, start=1):
        ppl = f"{row['val_ppl']:.3f}" if row["val_ppl"] is not None else row.get("error", "-")
        cells = [rank, row["trial"], *(row[n] for n in names), ppl, row["run"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
