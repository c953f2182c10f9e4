import json

import pytest

from evalkit.errors import EvalkitError
from evalkit.rating.export import dpo_rows, export, kto_rows, sft_rows
from evalkit.rating.queue import Item, QueueConfig, add_annotator, add_items, claim_next, submit
from evalkit.rating.report import load_ratings
from evalkit.rating.rubric import Rating
from evalkit.store import connect

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "question"}]
LOW = {"helpfulness": 2, "correctness": 1, "harmlessness": 3}
HIGH = {"helpfulness": 5, "correctness": 4, "harmlessness": 5}


def _rate(con, item, ratings):
    """Queue ``item`` and have one annotator per rating rate it."""
    add_items(con, [item])
    for n, rating in enumerate(ratings):
        name = f"rater-{n}"
        add_annotator(con, name)
        assert claim_next(con, name, QueueConfig(gold_every=0)).item_id == item.item_id
        submit(con, name, item.item_id, rating)


@pytest.fixture
def store(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    pair = dict(response_b="answer B", source_a="run-a", source_b="run-b", overlap=3)
    _rate(
        con,
        Item("pair", PROMPT, "answer A", {"n": 1}, **pair),
        [Rating(choice="B"), Rating(choice="B"), Rating(choice="A")],
    )
    _rate(
        con,
        Item("pair", PROMPT, "same A", {"n": 2}, **pair),
        [Rating(choice="A"), Rating(choice="B"), Rating(choice="tie")],
    )  # split: no row
    _rate(
        con,
        Item("correction", PROMPT, "wrong answer", {"n": 3}, overlap=2),
        [Rating(corrected="right answer"), Rating(corrected="wrong answer ")],
    )
    _rate(
        con,
        Item("single", PROMPT, "thumbs answer", {"n": 4}, overlap=2),
        [Rating(thumbs="down"), Rating(thumbs="down", scores=HIGH)],
    )
    _rate(
        con,
        Item("single", PROMPT, "likert answer", {"n": 5}, overlap=2),
        [Rating(scores=HIGH), Rating(scores=LOW)],
    )
    yield con
    con.close()


def test_sft_rows_are_corrected_conversations(store):
    rows = sft_rows(load_ratings(store))
    assert sorted(r["messages"][-1]["content"] for r in rows) == ["right answer", "wrong answer "]
    assert rows == sorted(rows, key=lambda r: (r["item_id"], r["rating_ids"]))
    assert all(r["messages"][:-1] == PROMPT for r in rows)
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)


def test_dpo_rows_from_majorities_and_corrections(store):
    records = load_ratings(store)
    rows = dpo_rows(records)
    by_rejected = {r["rejected"][0]["content"]: r for r in rows}
    assert set(by_rejected) == {"answer A", "wrong answer"}  # split vote and no-op edit dropped
    pair = by_rejected["answer A"]
    assert pair["prompt"] == PROMPT and pair["chosen"] == [
        {"role": "assistant", "content": "answer B"}
    ]
    item_ratings = {r["rating_id"] for r in records if r["item_id"] == pair["item_id"]}
    assert set(pair["rating_ids"]) == item_ratings and len(item_ratings) == 3
    assert by_rejected["wrong answer"]["chosen"][0]["content"] == "right answer"


def test_kto_rows_from_thumbs_or_likert(store):
    rows = {r["completion"][0]["content"]: r for r in kto_rows(load_ratings(store))}
    assert rows["thumbs answer"]["label"] is False  # thumbs win over the scores
    assert "likert answer" not in rows  # one high, one low: a split
    lenient = {r["completion"][0]["content"]: r for r in kto_rows(load_ratings(store),
               likert_threshold=2.0)}  # fmt: skip
    assert lenient["likert answer"]["label"] is True
    assert all(r["prompt"] == PROMPT and len(r["rating_ids"]) == 2 for r in rows.values())


@pytest.mark.parametrize("fmt", ["sft", "dpo", "kto"])
def test_exports_are_deterministic_jsonl_with_rating_ids(store, tmp_path, fmt):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    count = export(store, fmt, first)
    assert count == export(store, fmt, second) and count > 0
    assert first.read_bytes() == second.read_bytes()
    ids = {r["rating_id"] for r in load_ratings(store)}
    for line in first.read_text().splitlines():
        row = json.loads(line)
        assert row["rating_ids"] and set(row["rating_ids"]) <= ids
        for key in ("messages", "prompt", "chosen", "rejected", "completion"):
            if key in row:  # TRL's conversational format: lists of role/content messages
                assert all(set(m) == {"role", "content"} for m in row[key])
    keys = {"sft": {"messages"}, "dpo": {"prompt", "chosen", "rejected"},
            "kto": {"prompt", "completion", "label"}}[fmt]  # fmt: skip
    assert keys <= set(json.loads(first.read_text().splitlines()[0]))


def test_unknown_format(store, tmp_path):
    with pytest.raises(EvalkitError, match="unknown export format 'orpo'"):
        export(store, "orpo", tmp_path / "x.jsonl")


@pytest.mark.parametrize(
    ("votes", "chosen"),
    [
        (["tie", "B"], None),  # one of two annotators is no majority
        (["both_bad", "A"], None),
        (["A", "B"], None),
        (["tie", "B", "B"], "answer B"),
        (["A", "A", "B", "tie"], None),  # 2 of 4
        (["A"], "answer A"),
    ],
)
def test_dpo_takes_only_what_most_annotators_preferred(tmp_path, votes, chosen):
    con = connect(tmp_path / "store.duckdb")
    pair = dict(response_b="answer B", source_a="run-a", source_b="run-b", overlap=len(votes))
    _rate(
        con, Item("pair", PROMPT, "answer A", {"n": 1}, **pair), [Rating(choice=v) for v in votes]
    )
    rows = dpo_rows(load_ratings(con))
    con.close()
    assert [r["chosen"][0]["content"] for r in rows] == ([chosen] if chosen else [])
