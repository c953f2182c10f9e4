"""Steps 3-5 and 11-12: a model version fine-tuned, evaluated on a suite beside the one before
it, and gated against it, its reports written and kept in the store."""

from __future__ import annotations

from pathlib import Path

from evalkit.demo.config import GATE_SPEC, DemoConfig, fresh
from evalkit.demo.progress import say
from evalkit.workspace import Workspace


def finetune(ws: Workspace, config: DemoConfig, base: Path, data: Path, name: str, epochs: float):
    """``base`` fine-tuned on ``data`` into the run ``name`` (emptied first); the model's folder."""
    from finetune.train import TrainConfig, train

    run = fresh(ws.runs_dir / name)
    result = train(
        TrainConfig(
            base=str(base),
            data=str(data),
            out=str(run),
            epochs=epochs,
            learning_rate=config.learning_rate,
            truncate=True,  # chit-chat runs past the context: its beginning still teaches
            seed=config.seed,
        )
    )
    say(result.describe().replace("\n", "\n        "))
    return run / "model"


def write_suite(path: Path, name: str, config: DemoConfig, datasets: dict, bias: bool) -> Path:
    """A suite over ``datasets`` (name -> file): perplexity on each, generation with BLEU/chrF
    and their content control on ``support``, and the bias probes when ``bias``."""
    lines = [f'name = "{name}"', f"seed = {config.seed}", ""]
    for dataset, file in datasets.items():
        lines += [f"[datasets.{dataset}]", f'path = "{file}"', ""]
    for dataset in datasets:
        lines += ["[[tasks]]", 'type = "perplexity"', f'dataset = "{dataset}"', ""]
    lines += [
        "[[tasks]]",
        'type = "generation"',
        'dataset = "support"',
        f"max_new_tokens = {config.max_new_tokens}",
        "repetition_penalty = 1.3",
        "no_repeat_ngram_size = 3",
        "",
    ]
    if bias:
        lines += ["[[tasks]]", 'type = "bias"', 'name = "bias"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def evaluate(ws: Workspace, suite: Path, models: dict[str, Path]) -> dict[str, str]:
    """Run the suite on each model (name -> directory); the run ids by name."""
    from evalkit.evaluate import run_suite

    runs = {}
    for name, model in models.items():
        done = run_suite(suite, model, ws.store_path, name=name)
        say(done.describe().replace("\n", "\n        "))
        runs[name] = done.run_id
    return runs


def write_spec(path: Path, extra_tasks: list[str]) -> Path:
    """The default gate spec, with a perplexity rule on each of ``extra_tasks``."""
    text = GATE_SPEC.read_text()
    for task in extra_tasks:
        text += (
            f"\n[[rules]]  # {task}: no worse than the tolerance on support\n"
            f'metric = "perplexity"\ntask = "perplexity:{task}"\nmax_relative_increase = 0.02\n'
        )
    path.write_text(text)
    return path


def gate(ws: Workspace, baseline: str, candidate: str, spec: Path, n_resamples: int):
    """Judge, write report.md/.html/.json under the workspace's reports and keep it in the
    store; returns the report and its folder."""
    from dataclasses import replace

    from evalkit.gate import load_spec, record_report, report_name, run_gate, write_reports
    from evalkit.store import open_store

    with open_store(ws.store_path) as con:
        report = run_gate(
            con, baseline, candidate, replace(load_spec(spec), n_resamples=n_resamples)
        )
        out = ws.reports_dir / report_name(report)
        write_reports(report, out)
        record_report(con, report, out)
    for rule in report.rules:
        say(f"{rule.verdict:<13} {rule.rule}")
    for warning in report.warnings:
        say(f"warning: {warning}")
    say(f"gate: {report.verdict}; reports: {out}/report.md, report.html, report.json")
    return report, out
