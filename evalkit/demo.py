"""The demo: the main job of the platform on the embedded default, end to end as far as it exists.

Loads the three embedded corpora, builds (or reuses) the base model and reports its perplexity on
held-out chit-chat.
"""

from __future__ import annotations

from pathlib import Path

from evalkit.workspace import open_workspace


def run_demo(workspace: str | Path | None = None, *, size: str = "default") -> Path:
    """Run the demo and print what it did; returns the base model directory."""
    from finetune.base_model import build_base_model, summary
    from finetune.corpora import CORPORA

    ws = open_workspace(workspace)
    print(f"workspace: {ws.root}")
    corpora = {}
    for name, load in CORPORA.items():
        corpora[name] = load()
        print(f"corpus {name}: {len(corpora[name]):,} conversations")
    path = build_base_model(ws, size, conversations=corpora["chitchat"])
    print(summary(path))
    return path
