"""The embedded corpora, loaded into the conversation contract.

Each loader returns a list of conversations, ``{"messages": [{"role", "content"}...], ...}``,
with the source's metadata kept beside the messages (ids, topics, ratings, timestamps).

- ``chitchat``: the ``chitchat-dataset`` package, 7,168 human conversations (BYU PCC lab, MIT).
- ``topics``: the ``chatterbot-corpus`` package, English topic files, deduplicated.
- ``support``: ``fixtures/support_faq.jsonl``, Python and Debian FAQ question-answer pairs.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from evalkit.errors import EvalkitError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SUPPORT_FAQ = FIXTURES / "support_faq.jsonl"

# The bot's persona and the generic small-talk file carry no topic of their own.
NON_TOPIC_FILES = ("botprofile", "conversations")


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise EvalkitError(
            f"cannot read corpus {path}: {exc}",
            hint="reinstall the package that ships it (make venv) or pass the path of a good copy",
        ) from exc


def _alternate(turns: Iterable[str]) -> list[dict]:
    """Turns spoken alternately by two people: the first is the user, the second the assistant."""
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def load_chitchat(path: str | Path | None = None) -> list[dict]:
    """The chit-chat corpus: one conversation per chat, a speaker's consecutive lines one turn."""
    if path is None:
        import chitchat_dataset

        path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    data = _read_json(Path(path))
    conversations = []
    for conv_id, conv in data.items():  # type: ignore[union-attr]
        turns = conv["messages"]
        conversations.append(
            {
                "messages": _alternate("\n".join(u["text"] for u in turn) for turn in turns),
                "id": f"chitchat-{conv_id}",
                "source": "chitchat",
                "prompt": conv.get("prompt"),
                "ratings": conv.get("ratings"),
                "start": conv.get("start"),
                "timestamps": [turn[0]["timestamp"] for turn in turns],
            }
        )
    return conversations


def load_topics(path: str | Path | None = None) -> list[dict]:
    """The chatterbot English topic files, each distinct conversation once, with its topic."""
    import yaml

    if path is None:
        import chatterbot_corpus

        path = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    files = sorted(p for p in Path(path).glob("*.yml") if p.stem not in NON_TOPIC_FILES)
    if not files:
        raise EvalkitError(
            f"no topic files (*.yml) in {path}", hint="reinstall chatterbot-corpus (make venv)"
        )
    seen: set[tuple[str, ...]] = set()
    conversations = []
    for file in files:
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise EvalkitError(f"cannot read topic file {file}: {exc}") from exc
        for index, turns in enumerate(doc.get("conversations") or []):
            key = tuple(str(t).strip() for t in turns)
            if key in seen:
                continue
            seen.add(key)
            conversations.append(
                {
                    "messages": _alternate(key),
                    "id": f"topics-{file.stem}-{index:04d}",
                    "source": "chatterbot-corpus",
                    "topic": file.stem,
                    "categories": doc.get("categories") or [],
                }
            )
    return conversations


def load_support_faq(path: str | Path = SUPPORT_FAQ) -> list[dict]:
    """The customer-support domain: Python FAQ and Debian FAQ question-answer pairs."""
    return read_jsonl(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a conversation JSONL file; a bad line is an error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalkitError(f"cannot read {path}: {exc}") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EvalkitError(
                f"{path}:{number}: not a JSON object ({exc.msg})", hint="fix or remove that line"
            ) from exc
    return records


CORPORA: dict[str, Callable[[], list[dict]]] = {
    "chitchat": load_chitchat,
    "topics": load_topics,
    "support": load_support_faq,
}


def load_corpus(name: str) -> list[dict]:
    """Load an embedded corpus by name (``chitchat``, ``topics`` or ``support``)."""
    if name not in CORPORA:
        close = difflib.get_close_matches(name, CORPORA, n=1)
        hint = f"did you mean: {close[0]}?" if close else f"choose one of {', '.join(CORPORA)}"
        raise EvalkitError(f"unknown corpus {name!r}", hint=hint)
    return CORPORA[name]()


def labelled_prompts(chitchat: int = 600, seed: int = 0) -> tuple[list[str], list[str]]:
    """First user turns with a topic label, to train the drift job's topic classifier: each
    chatterbot topic by its file's name, the support FAQ as ``support``, and a seeded sample of
    ``chitchat`` chit-chat conversations as ``chitchat``."""
    import random

    texts, labels = [], []
    sample = load_chitchat()
    random.Random(seed).shuffle(sample)
    for label, records in (
        *((c["topic"], [c]) for c in load_topics()),
        ("support", load_support_faq()),
        ("chitchat", sample[:chitchat]),
    ):
        for record in records:
            first = next((m["content"] for m in record["messages"] if m["role"] == "user"), "")
            if first.strip():
                texts.append(first)
                labels.append(label)
    return texts, labels
