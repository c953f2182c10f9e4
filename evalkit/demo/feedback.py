"""Steps 8-10, where the loop closes: the drifted and low-rated exchanges queued for rating, a
simulated annotator rating and correcting them, and the next dataset with its regression set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evalkit.demo.config import DemoConfig
from evalkit.demo.data import Data
from evalkit.demo.progress import say
from evalkit.workspace import Workspace, write_jsonl


def queue_for_rating(ws: Workspace, config: DemoConfig) -> dict[str, int]:
    """Each drifted and each low-rated exchange as two items: one to score, one to correct."""
    from evalkit.rating.queue import add_items
    from evalkit.rating.sources import Selection, items_from_events
    from evalkit.store import open_store

    added = {}
    with open_store(ws.store_path) as con:
        for select in ("drift", "low_feedback"):
            items = [
                item
                for kind in ("single", "correction")
                for item in items_from_events(
                    ws.events_dir, Selection(kind=kind, seed=config.seed), select=select
                )
            ]
            added[select] = add_items(con, items, batch=f"demo-{select}")
    say(
        f"queued {added['drift']} items of drifted and {added['low_feedback']} of low-rated "
        "exchanges (each to score, and to correct)"
    )
    return added


def simulate_annotator(ws: Workspace, data: Data) -> dict[str, int]:
    """The queue rated and corrected by the simulation against the reference answers."""
    from evalkit.rating.simulated import NAME, rate_queue
    from evalkit.store import open_store

    with open_store(ws.store_path) as con:
        counts = rate_queue(con, data.references)
    say(
        f"{NAME} (a simulation, not a person: scores from the chrF of each response against "
        f"the held-out reference answer, corrections = the reference answers): "
        f"{counts['scored']} scored, {counts['corrected']} corrected, {counts['skipped']} skipped"
    )
    return counts


def next_dataset(ws: Workspace, config: DemoConfig, data: Data, v1: Path) -> Path:
    """The corrections exported (SFT), prepared with the event log and v1's data into the next
    dataset (training rows that share a 13-gram with an evaluation set dropped); the corrected
    exchanges its split holds out become the regression set. Returns the dataset."""
    from evalkit.rating.export import sft_rows
    from evalkit.rating.report import load_ratings
    from evalkit.store import open_store
    from finetune.data.corpora import read_jsonl
    from finetune.data.prepare import PrepareConfig, prepare

    with open_store(ws.store_path) as con:
        rows = sft_rows(load_ratings(con))
    for row in rows:  # a question asked again is one conversation: one split, stable ids
        row["conversation_id"] = hashlib.sha256(json.dumps(row["messages"]).encode()).hexdigest()[
            :16
        ]
    rows.sort(key=lambda r: (r["conversation_id"], r["item_id"]))
    corrections = write_jsonl(rows, ws.datasets_dir / "demo-feedback" / "corrections.jsonl")
    folder = ws.datasets_dir / "demo-v2"
    manifest = prepare(
        [  # v1's data first: a correction that repeats it is the duplicate dropped
            f"v1={data.v1 / 'train.jsonl'}",
            f"v1={data.v1 / 'validation.jsonl'}",
            f"served={ws.events_dir}",
            f"corrections={ws.datasets_dir / 'demo-feedback' / 'corrections.jsonl'}",
        ],
        folder,
        PrepareConfig(
            model=str(v1),
            seed=config.seed,
            ratios=(0.7, 0.1, 0.2),  # a fifth of the corrections held out: the regression set
            exclude={"corrected": "False"},  # an uncorrected answer is no target
            eval_sets={"support": str(data.eval_support), "topics": str(data.eval_topics)},
            drop_contaminated=True,
        ),
    )
    c = manifest["counts"]
    kept = {}
    for f in manifest["inputs"]:
        kept[f["source"]] = kept.get(f["source"], 0) + f["kept"]
    say(
        f"dataset {folder}: {corrections} corrections, {c['read']:,} read -> {c['train']:,} "
        f"train, {c['validation']:,} validation, {c['test']:,} test (kept per input: {kept})"
    )
    regression = ws.datasets_dir / "demo-eval" / "regression.jsonl"
    held = [r for r in read_jsonl(folder / "test.jsonl") if r.get("source") == "corrections"]
    write_jsonl(held, regression)
    say(f"regression set: {len(held)} corrected exchanges held out from training -> {regression}")
    return folder
