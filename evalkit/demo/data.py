"""Steps 1-2: the base model, and the datasets the loop starts from: the support domain v1 is
trained on, the drift episode's pool of other topics and chit-chat, their held-out evaluation
sets, the traffic's prompts and what the simulated users and annotator know of them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from evalkit.demo.config import SERVED, DemoConfig
from evalkit.demo.progress import say
from evalkit.workspace import Workspace, write_jsonl


def build_base(ws: Workspace, config: DemoConfig) -> Path:
    """The base model of ``config.size``, built once and then loaded from the workspace."""
    from finetune.base_model import build_base_model, summary

    model = build_base_model(ws, config.size)
    say(summary(model).replace("\n", "\n        "))
    return model


@dataclass
class Data:
    """The prepared datasets and what the traffic and the simulation know."""

    support: Path  # the support FAQ, split: its test split is the held-out support questions
    v1: Path  # v1's training data (its train and validation splits)
    drift: Path  # the drift episode's pool: traffic from its train split, the rest held out
    eval_support: Path  # held-out support conversations (evaluation sets)
    eval_topics: Path  # held-out topic conversations never sent as traffic
    calm: list[str]  # traffic prompts: the support questions
    drift_prompts: list[str]  # topics and chit-chat, none of them held out for evaluation
    references: dict[str, str]  # prompt -> reference answer (what the simulation knows)
    reference_events: Path  # the drift job's reference: the support questions as traffic


def _first_exchange(record: dict) -> tuple[str, str] | None:
    messages = record["messages"]
    if len(messages) >= 2 and messages[0]["role"] == "user" and messages[1]["role"] == "assistant":
        return messages[0]["content"], messages[1]["content"]
    return None


def _fitting(model: Path, pairs: list[tuple[str, str]], reply_tokens: int) -> list[tuple]:
    """The (prompt, answer) pairs whose prompt leaves room for a reply in the model's context
    (the server refuses longer ones), first occurrence of each prompt."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    context = AutoConfig.from_pretrained(model).max_position_embeddings
    seen, kept = set(), []
    for prompt, answer in pairs:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        if prompt not in seen and len(ids) + reply_tokens <= context:
            seen.add(prompt)
            kept.append((prompt, answer))
    return kept


def _pairs(*files: Path) -> list[tuple[str, str]]:
    from finetune.data.corpora import read_jsonl

    return [p for f in files for p in map(_first_exchange, read_jsonl(f)) if p]


def _reference_events(pairs: list[tuple[str, str]], path: Path) -> Path:
    """An events file (as ``monitor import`` reads it) of the support questions, each once:
    the traffic the drift job compares each window with. It stands in for a period of the
    log known to be normal (``log:START..END``); the calm traffic is drawn from it."""
    rows = [
        {
            "timestamp": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "model": SERVED,
            "prompt": json.dumps([{"role": "user", "content": prompt}]),
            "response": "",
        }
        for i, (prompt, _) in enumerate(pairs)
    ]
    write_jsonl(rows, path)
    return path


def prepare_data(ws: Workspace, config: DemoConfig, base: Path, folder: Path) -> Data:
    """The shipped corpora prepared (with the base model's tokenizer) into the support dataset,
    v1's data and the drift pool, with their held-out evaluation sets and the traffic's prompts;
    the drift job's reference written into ``folder``."""
    from finetune.data.corpora import load_chitchat, load_support_faq, load_topics, read_jsonl
    from finetune.data.prepare import PrepareConfig, prepare

    raw, out = ws.datasets_dir / "demo-raw", ws.datasets_dir
    chitchat = load_chitchat()
    random.Random(config.seed).shuffle(chitchat)
    sources = {
        "support": load_support_faq(),
        "chitchat": chitchat[: config.chitchat],
        "topics": load_topics(),
        "chitchat-drift": chitchat[config.chitchat : config.chitchat + config.drift_chitchat],
    }
    for name, records in sources.items():
        write_jsonl(records, raw / f"{name}.jsonl")

    def run(name: str, inputs: list[str], **options) -> Path:
        options = {"model": str(base), "seed": config.seed, **options}
        manifest = prepare(inputs, out / name, PrepareConfig(**options))
        c = manifest["counts"]
        say(
            f"dataset {out / name}: {c['read']:,} read -> {c['train']:,} train, "
            f"{c['validation']:,} validation, {c['test']:,} test, {c['dropped']:,} dropped "
            "(reasons in its report.md)"
        )
        return out / name

    support = run("demo-support", [f"support={raw / 'support.jsonl'}"])
    eval_dir = out / "demo-eval"
    eval_support = eval_dir / "support.jsonl"
    write_jsonl(read_jsonl(support / "test.jsonl"), eval_support)
    v1 = run(
        "demo-v1",
        [
            f"support={support / 'train.jsonl'}",
            f"support={support / 'validation.jsonl'}",
            f"chitchat={raw / 'chitchat.jsonl'}",
        ],
        ratios=(0.9, 0.1, 0.0),  # its held-out questions are the support test split
        eval_sets={"support": str(eval_support)},
        drop_contaminated=True,
    )
    drift = run(
        "demo-drift", [f"topics={raw / 'topics.jsonl'}", f"chitchat={raw / 'chitchat-drift.jsonl'}"]
    )
    eval_topics = eval_dir / "topics.jsonl"
    held_out = [r for r in read_jsonl(drift / "test.jsonl") if "topic" in r]
    write_jsonl(held_out, eval_topics)

    # The calm traffic is the support questions as users ask them: all of them, so that a
    # window is a sample of the reference's own kind (a window drawn from the 30 held-out ones
    # differs from any reference by their few prompts alone, and raises false alerts).
    splits = [support / f"{split}.jsonl" for split in ("train", "validation", "test")]
    calm = _fitting(base, _pairs(*splits), config.reply_tokens)
    drifting = _fitting(
        base, _pairs(drift / "train.jsonl", drift / "validation.jsonl"), config.reply_tokens
    )
    drifting = random.Random(config.seed).sample(drifting, config.drift_prompts)
    say(
        f"traffic: {len(calm)} support questions, then {len(drifting)} topic and chit-chat "
        f"prompts (of {len(held_out)} topic conversations held out for evaluation, none)"
    )
    return Data(
        support,
        v1,
        drift,
        eval_support,
        eval_topics,
        [p for p, _ in calm],
        [p for p, _ in drifting],
        dict(calm + drifting),
        _reference_events(calm, folder / "drift-reference.jsonl"),
    )
