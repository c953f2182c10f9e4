"""A simulated annotator, for demos and tests: not a person, and named so in the store.

It knows the reference answer of each prompt it may be shown (held-out data), and follows one
rule. A response's **score** is its chrF (sacrebleu, as evaluation runs compute it) against the
reference answer, on the rubric's 1-5 scale: ``1 + chrF // 20`` (1 below 20, 5 from 80 on),
the same on every dimension. Its **thumbs** are up from score 3 (chrF 40) on, down below. A
**correction** is the reference answer itself. An item whose prompt it has no reference for is
skipped with that reason. The same rule gives simulated users' feedback (:func:`thumbs`).
"""

from __future__ import annotations

import duckdb

from evalkit.rating.queue import add_annotator, claim_next, submit_and_claim
from evalkit.rating.rubric import Rating, load_rubric

NAME = "simulated-annotator"
NO_REFERENCE = "the simulation knows no reference answer for this prompt"


def chrf(response: str, reference: str) -> float:
    from evalkit.metrics import corpus_from_stats, sentence_stats

    return float(corpus_from_stats("chrf", sentence_stats("chrf", [response], [reference]))[0])


def score(response: str, reference: str) -> int:
    """The rule's Likert score, 1-5, from chrF."""
    return min(5, 1 + int(chrf(response, reference) // 20))


def thumbs(response: str, reference: str) -> str:
    return "up" if score(response, reference) >= 3 else "down"


def prompt_key(messages: list[dict]) -> str:
    """What a reference is looked up by: the last user turn."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _rating(kind: str, prompt: list[dict], response: str, references: dict[str, str]) -> Rating:
    reference = references.get(prompt_key(prompt))
    if reference is None:
        return Rating(skip_reason=NO_REFERENCE)
    if kind == "correction":
        return Rating(corrected=reference)
    points = score(response, reference)
    dimensions = load_rubric().dimension_names
    return Rating(scores=dict.fromkeys(dimensions, points), thumbs=thumbs(response, reference))


def rate_queue(con: duckdb.DuckDBPyConnection, references: dict[str, str]) -> dict[str, int]:
    """Rate every item the queue serves the simulated annotator (single items scored,
    corrections written, pairs skipped); returns counts by kind of rating."""
    add_annotator(con, NAME)
    counts = {"scored": 0, "corrected": 0, "skipped": 0}
    item = claim_next(con, NAME)
    while item is not None:
        if item.kind == "pair":
            rating = Rating(skip_reason="the simulation judges single responses only")
        else:
            rating = _rating(item.kind, item.prompt, item.response_a, references)
        done = "skipped" if rating.skip_reason else "corrected" if rating.corrected else "scored"
        counts[done] += 1
        _, item = submit_and_claim(con, NAME, item.item_id, rating)
    return counts
