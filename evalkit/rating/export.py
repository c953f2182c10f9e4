"""Training data from ratings, in TRL's conversational formats, one JSON object per line.

- ``sft``: ``{"messages": [...]}``: the prompt and the annotator's corrected response.
- ``dpo``: ``{"prompt", "chosen", "rejected"}``: from pairwise judgements (the answer more than
  half of the item's annotators preferred; a "tie" or "both bad" vote is a vote for neither, so
  a tie and a B, or an even split, give no row) and from corrections (the correction is
  preferred over the original).
- ``kto``: ``{"prompt", "completion", "label"}``: from thumbs, or from the mean Likert score
  against a threshold when a rating has no thumbs; the item's label is the majority of its
  ratings' labels (a split gives no row).

``prompt`` is a list of messages, ``chosen``/``rejected``/``completion`` one assistant message.
Every row also carries ``item_id`` and the ``rating_ids`` it came from. Rows are sorted by item,
then rating, so the same store always gives the same file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import duckdb

from evalkit.errors import EvalkitError
from evalkit.rating.report import load_ratings
from evalkit.workspace import write_jsonl

FORMATS = ("sft", "dpo", "kto")


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _by_item(records: Iterable[dict]) -> dict[str, list[dict]]:
    items: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["item_id"], r["rating_id"])):
        items[r["item_id"]].append(r)
    return items


def _corrections(records: Iterable[dict]) -> list[dict]:
    return sorted(
        (r for r in records if r["corrected"] is not None),
        key=lambda r: (r["item_id"], r["rating_id"]),
    )


def sft_rows(records: Iterable[dict]) -> list[dict]:
    """One conversation per correction: the prompt, then the corrected response."""
    return [
        {
            "messages": r["prompt"] + _assistant(r["corrected"]),
            "item_id": r["item_id"],
            "rating_ids": [r["rating_id"]],
        }
        for r in _corrections(records)
    ]


def dpo_rows(records: Iterable[dict]) -> list[dict]:
    """Preference pairs from pairwise majorities and from corrections."""
    records = list(records)
    rows = []
    for item_id, ratings in _by_item(r for r in records if r["choice"]).items():
        votes = [r["choice"] for r in ratings]
        a, b = votes.count("A"), votes.count("B")
        if 2 * max(a, b) <= len(votes):  # no answer has a majority of the votes
            continue
        first = ratings[0]
        better, worse = (first["response_a"], first["response_b"])[:: 1 if a > b else -1]
        rows.append(
            {
                "prompt": first["prompt"],
                "chosen": _assistant(better),
                "rejected": _assistant(worse),
                "item_id": item_id,
                "rating_ids": [r["rating_id"] for r in ratings],
            }
        )
    rows.extend(
        {
            "prompt": r["prompt"],
            "chosen": _assistant(r["corrected"]),
            "rejected": _assistant(r["original"]),
            "item_id": r["item_id"],
            "rating_ids": [r["rating_id"]],
        }
        for r in _corrections(records)
        if r["corrected"].strip() != r["original"].strip()
    )
    return sorted(rows, key=lambda row: (row["item_id"], row["rating_ids"]))


def _label(rating: dict, likert_threshold: float) -> bool | None:
    if rating["thumbs"] is not None:
        return rating["thumbs"] == "up"
    if rating["scores"]:
        return sum(rating["scores"].values()) / len(rating["scores"]) >= likert_threshold
    return None


def kto_rows(records: Iterable[dict], *, likert_threshold: float = 4.0) -> list[dict]:
    """Desirable / undesirable completions from thumbs or mean Likert scores."""
    rows = []
    for item_id, ratings in _by_item(records).items():
        labelled = [(r, _label(r, likert_threshold)) for r in ratings]
        labelled = [(r, label) for r, label in labelled if label is not None]
        up = sum(label for _, label in labelled)
        down = len(labelled) - up
        if up == down:
            continue
        first = labelled[0][0]
        rows.append(
            {
                "prompt": first["prompt"],
                "completion": _assistant(first["response_a"]),
                "label": up > down,
                "item_id": item_id,
                "rating_ids": [r["rating_id"] for r, _ in labelled],
            }
        )
    return rows


def export(
    con: duckdb.DuckDBPyConnection, fmt: str, path: str | Path, *, likert_threshold: float = 4.0
) -> int:
    """Write the ``fmt`` (sft, dpo, kto) rows of every counted rating to ``path``."""
    if fmt not in FORMATS:
        raise EvalkitError(f"unknown export format {fmt!r}", hint=f"one of: {', '.join(FORMATS)}")
    records = load_ratings(con)
    if fmt == "sft":
        rows = sft_rows(records)
    elif fmt == "dpo":
        rows = dpo_rows(records)
    else:
        rows = kto_rows(records, likert_threshold=likert_threshold)
    return write_jsonl(rows, path)
