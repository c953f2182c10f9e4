"""The demo: the main job of the platform on the embedded default, as far as it exists.

Builds (or reuses) the base model and reports its perplexity on held-out chit-chat, then
prepares the three embedded corpora into a dataset directory with the base model's tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from evalkit.workspace import open_workspace, write_jsonl


def run_demo(workspace: str | Path | None = None, *, size: str = "default") -> Path:
    """Run the demo and print what it did; returns the prepared dataset directory."""
    from finetune.base_model import build_base_model, summary
    from finetune.data.corpora import CORPORA
    from finetune.data.prepare import PrepareConfig, prepare

    ws = open_workspace(workspace)
    print(f"workspace: {ws.root}")
    raw = ws.datasets_dir / "raw"
    corpora = {}
    for name, load in CORPORA.items():
        corpora[name] = load()
        write_jsonl(corpora[name], raw / f"{name}.jsonl")
        print(f"corpus {name}: {len(corpora[name]):,} conversations -> {raw / name}.jsonl")
    model = build_base_model(ws, size, conversations=corpora["chitchat"])
    print(summary(model))
    out = ws.datasets_dir / "demo"
    config = PrepareConfig(model=str(model), balance_by="topic", max_length=256)
    manifest = prepare([f"{name}={raw / name}.jsonl" for name in CORPORA], out, config)
    counts = manifest["counts"]
    print(
        f"dataset: {out} ({manifest['dataset_hash'][:12]}): {counts['read']:,} read -> "
        f"{counts['train']:,} train, {counts['validation']:,} validation, {counts['test']:,} "
        f"test; {counts['dropped']:,} dropped with their reasons (report.md, dropped.jsonl)"
    )
    return out
