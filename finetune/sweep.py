"""Hyperparameter sweeps: each trial a training run; finished trials ranked by validation
perplexity, failed ones listed apart.

Methods: ``grid`` (every combination), ``random`` (a seeded sample of the grid) and ``optuna``
(its TPE sampler over the same choices). SIGTERM or SIGINT stops the sweep: the running trial
checkpoints, no later trial starts. A trial whose run directory already holds a finished run is
read back, not retrained, and a stopped one resumes, so the same command picks up where it
stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from evalkit.errors import EvalkitError, unknown_name
from finetune.train import StopOnSignal, Stopped, TrainConfig, option_types, train

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


@dataclass
class SweepResult:
    """A sweep's trials: ``ranked`` (finished, best validation perplexity first), ``failed``
    (with their error, never ranked) and ``stopped`` (the trial a signal stopped, if any; the
    trials after it never ran)."""

    ranked: list[dict]
    failed: list[dict]
    stopped: list[dict]
    signal: int | None = None  # the signal that stopped the sweep

    @property
    def exit_code(self) -> int:
        """0: every trial finished; 1: some failed, the others are ranked; 2: none finished;
        128 + the signal's number (143 for SIGTERM, 130 for SIGINT): stopped, as shells say."""
        if self.signal:
            return 128 + self.signal
        if self.failed:
            return 1 if self.ranked else 2
        return 0


def _run_trial(base: TrainConfig, params: dict, out: Path, index: int) -> dict:
    """Train one trial (or read it back); its row says whether it finished, failed or was
    stopped."""
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
        except Stopped as exc:
            return row | {"status": "stopped", "signal": exc.signal, "error": exc.message}
        except EvalkitError as exc:
            return row | {"status": "failed", "error": exc.message}
    loss = json.loads(summary_file.read_text())["best_val_loss"]
    if loss is None:
        error = "finished without a validation perplexity (is the validation split empty?)"
        return row | {"status": "failed", "error": error}
    return row | {"status": "finished", "val_ppl": math.exp(loss)}


def sweep(
    base: TrainConfig,
    space: dict[str, list],
    out: str | Path,
    *,
    method: str = "grid",
    trials: int | None = None,
    seed: int = 0,
) -> SweepResult:
    """Run the trials and write ``results.json`` and ``results.md``.

    SIGTERM or SIGINT stops the running trial at its next step (it checkpoints), or, between
    trials, the sweep before its next one; what ran so far is written all the same.
    """
    if method not in METHODS:
        raise EvalkitError(f"unknown sweep method {method!r}", hint=f"use {', '.join(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(space)
    grid = [dict(zip(names, combo)) for combo in itertools.product(*space.values())]
    rows: list[dict] = []
    # A signal while no trial trains (between trials, while a model loads) lands here.
    with StopOnSignal() as between:

        def run(params: dict) -> dict | None:
            """The next trial; None once a signal has stopped the sweep."""
            if between.signal or (rows and rows[-1]["status"] == "stopped"):
                return None
            rows.append(_run_trial(base, params, out, len(rows)))
            return rows[-1]

        if method == "optuna":
            _optuna(space, run, trials or len(grid), seed)
        else:
            if method == "random":
                grid = random.Random(seed).sample(grid, min(trials or len(grid), len(grid)))
            for params in grid:
                if run(params) is None:
                    break
    stopped = [r for r in rows if r["status"] == "stopped"]
    result = SweepResult(
        ranked=sorted(
            (r for r in rows if r["status"] == "finished"),
            key=lambda r: (r["val_ppl"], r["trial"]),
        ),
        failed=[r for r in rows if r["status"] == "failed"],
        stopped=stopped,
        signal=stopped[0]["signal"] if stopped else between.signal,
    )
    (out / "results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    (out / "results.md").write_text(results_table(result, names))
    return result


def _optuna(space: dict[str, list], run, n: int, seed: int) -> None:
    """``n`` trials chosen by optuna's TPE sampler, each run by ``run`` (None: stop)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        params = {name: trial.suggest_categorical(name, choices) for name, choices in space.items()}
        row = run(params)
        if row is None or row["status"] == "stopped":
            trial.study.stop()
        return row["val_ppl"] if row and row["status"] == "finished" else float("inf")

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n)


def results_table(result: SweepResult, names: list[str]) -> str:
    """The ranked trials as a markdown table; failed and stopped trials apart, unranked."""
    header = ["rank", "trial", *names, "validation perplexity", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(result.ranked, start=1):
        cells = [rank, row["trial"], *(row[n] for n in names), f"{row['val_ppl']:.3f}", row["run"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for title, rows in (("Failed", result.failed), ("Stopped", result.stopped)):
        if rows:
            lines += ["", f"{title} (not ranked):", ""]
            lines += [f"- trial {r['trial']} ({r['run']}): {r['error']}" for r in rows]
    if result.signal:
        lines += ["", "The sweep was stopped: the same command resumes it."]
    return "\n".join(lines) + "\n"
