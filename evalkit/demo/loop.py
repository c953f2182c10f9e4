"""The loop: the demo's 13 steps in order, each timed, its files in ``WORKSPACE/demo``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from evalkit.demo.config import GATE_SPEC, QUICK, DemoConfig, fresh
from evalkit.demo.data import build_base, prepare_data
from evalkit.demo.feedback import next_dataset, queue_for_rating, simulate_annotator
from evalkit.demo.progress import Progress, say
from evalkit.demo.release import evaluate, finetune, gate, write_spec, write_suite
from evalkit.demo.serving import drift_timing, read_drift, send_traffic, serve
from evalkit.demo.summary import Summary, print_summary, summarize
from evalkit.workspace import open_workspace


def run_demo(workspace: str | Path | None = None, *, quick: bool = False) -> Summary:
    """Run the 13 steps and print the summary; returns it (also in WORKSPACE/demo/summary.json)."""
    config = QUICK if quick else DemoConfig()
    ws = open_workspace(workspace)
    if not sys.stderr.isatty():  # a log gets the step lines, not the libraries' bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    folder = fresh(ws.root / "demo")
    folder.mkdir()
    print(f"workspace: {ws.root}" + (" (--quick: micro sizes, short traffic)" if quick else ""))
    progress = Progress()
    with progress.step("build the base model, or load it from the cache"):
        base = build_base(ws, config)
    with progress.step("prepare the support-domain dataset and the drift episode's pool"):
        data = prepare_data(ws, config, base, folder)
    with progress.step("fine-tune v1 on the support data"):
        v1 = finetune(ws, config, base, data.v1, "demo-v1", config.v1_epochs)
    with progress.step("evaluate the base model and v1"):
        datasets = {"support": "../datasets/demo-eval/support.jsonl"}
        suite = write_suite(folder / "suite-v1.toml", "demo-v1", config, datasets, bias=True)
        first = evaluate(ws, suite, {"demo-base": base, "demo-v1": v1})
    gates = {}
    with progress.step("gate v1 against the base"):
        gates["v1"] = gate(ws, first["demo-base"], first["demo-v1"], GATE_SPEC, config.n_resamples)
    with progress.step("serve v1 with the monitor"):
        serving = serve(ws, config, v1, data, folder)
    try:
        with progress.step("replay traffic: support questions, then a drift episode"):
            traffic = send_traffic(ws, config, serving, data)
            timing = drift_timing(traffic, serving, config)
    finally:
        serving.stop()
    drift = read_drift(ws, traffic) | timing
    say(
        f"drift alerts (store): {drift['alerts'] or 'none'} (seconds after the episode began); "
        f"{drift['calm_passes']} calm passes, {drift['calm_passes_drifted']} drifted"
    )
    with progress.step("queue the drifted and low-rated exchanges for rating"):
        queue_for_rating(ws, config)
    with progress.step("a simulated annotator rates and corrects them"):
        simulate_annotator(ws, data)
    with progress.step("build the next dataset and the regression set"):
        v2_data = next_dataset(ws, config, data, v1)
    with progress.step("fine-tune v2 from v1"):
        v2 = finetune(ws, config, v1, v2_data, "demo-v2", config.v2_epochs)
    with progress.step("evaluate v2 against v1 (support, drifted topics, regression set) and gate"):
        datasets = {
            "support": "../datasets/demo-eval/support.jsonl",
            "topics": "../datasets/demo-eval/topics.jsonl",
            "regression": "../datasets/demo-eval/regression.jsonl",
        }
        suite = write_suite(folder / "suite-v2.toml", "demo-v2", config, datasets, bias=False)
        second = evaluate(ws, suite, {"demo-v1-again": v1, "demo-v2": v2})
        spec = write_spec(folder / "gate-v2.toml", ["topics", "regression"])
        gates["v2"] = gate(ws, second["demo-v1-again"], second["demo-v2"], spec, config.n_resamples)
    with progress.step("summary"):
        summary = summarize(ws, gates, drift, traffic, serving.note)
        summary.seconds = progress.seconds
        (folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        print_summary(ws, summary, gates, base, v2)
    return summary
