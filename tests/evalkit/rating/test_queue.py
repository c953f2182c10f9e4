import json
import random
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from evalkit.errors import EvalkitError
from evalkit.rating.queue import (
    Item,
    QueueConfig,
    add_annotator,
    add_items,
    claim_next,
    set_gold,
    standing,
    submit,
    submit_and_claim,
    utc_now,
)
from evalkit.rating.report import (
    annotator_report,
    gold_correct,
    load_ratings,
    queue_status,
    ratings_version,
)
from evalkit.rating.rubric import Rating, load_rubric
from evalkit.store import connect

SCORES = {"helpfulness": 4, "correctness": 5, "harmlessness": 5}
NO_GOLD = QueueConfig(gold_every=0)


def _item(n, kind="single", **fields):
    pair = {"response_b": f"other answer {n}"} if kind == "pair" else {}
    return Item(
        kind, [{"role": "user", "content": f"question {n}"}], f"answer {n}", {"n": n},
        **pair, **fields,
    )  # fmt: skip


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    for name in ("ann", "bob", "cid"):
        add_annotator(con, name)
    yield con
    con.close()


def test_adding_the_same_items_twice_queues_them_once(con):
    items = [_item(n) for n in range(5)]
    assert add_items(con, items) == 5
    assert add_items(con, [*items, _item(5)]) == 1
    assert queue_status(con)["items"]["single"]["items"] == 6


def test_higher_priority_comes_first(con):
    low, high = _item(1), _item(2, priority=5)
    add_items(con, [low, high])
    assert claim_next(con, "ann", NO_GOLD).item_id == high.item_id
    assert claim_next(con, "bob", NO_GOLD).item_id == low.item_id  # ann holds its one place


def test_started_overlap_sets_come_before_priority(con):
    started, urgent = _item(1, overlap=2), _item(2, priority=9)
    add_items(con, [started])
    assert claim_next(con, "ann", NO_GOLD).item_id == started.item_id
    submit(con, "ann", started.item_id, Rating(thumbs="up"))
    add_items(con, [urgent])
    assert claim_next(con, "bob", NO_GOLD).item_id == started.item_id
    assert claim_next(con, "cid", NO_GOLD).item_id == urgent.item_id


def test_equal_items_come_in_a_seeded_order_per_annotator(tmp_path):
    def order(store, seed, annotator="ann"):
        con = connect(tmp_path / store)
        add_annotator(con, annotator)
        add_items(con, [_item(n) for n in range(30)])
        got = []
        while (a := claim_next(con, annotator, QueueConfig(gold_every=0, seed=seed))) is not None:
            submit(con, annotator, a.item_id, Rating(skip_reason="benchmarking the order"))
            got.append(a.item_id)
        con.close()
        return got

    first = order("a.duckdb", seed=3)
    assert order("b.duckdb", seed=3) == first and len(set(first)) == 30
    assert order("c.duckdb", seed=4) != first
    assert order("d.duckdb", seed=3, annotator="bob") != first


def test_refresh_returns_the_leased_item_and_expiry_passes_it_on(con):
    add_items(con, [_item(1)])
    config = QueueConfig(lease_ttl_s=0.4, gold_every=0)
    first = claim_next(con, "ann", config)
    assert claim_next(con, "ann", config).item_id == first.item_id  # a page refresh
    assert claim_next(con, "bob", config) is None  # ann holds the only place
    time.sleep(0.5)
    bob = claim_next(con, "bob", config)
    assert bob.item_id == first.item_id  # reclaimed after the TTL
    with pytest.raises(EvalkitError, match=r"expired .* went to another annotator") as err:
        submit(con, "ann", first.item_id, Rating(thumbs="up"))
    assert "nothing is lost" in err.value.hint
    refused = con.execute("SELECT annotator, item_id, rating FROM rating_refused").fetchall()
    assert refused == [("ann", first.item_id, json.dumps(
        {"scores": {}, "thumbs": "up", "choice": None, "corrected": None, "skip_reason": None}
    ))]  # fmt: skip
    submit(con, "bob", bob.item_id, Rating(thumbs="down"))
    assert [r["annotator"] for r in load_ratings(con)] == ["bob"]


def test_a_late_rating_is_counted_when_nobody_took_the_item(con):
    add_items(con, [_item(1)])
    config = QueueConfig(lease_ttl_s=0.2, gold_every=0)
    got = claim_next(con, "ann", config)
    time.sleep(0.3)
    submit(con, "ann", got.item_id, Rating(thumbs="up"))
    assert claim_next(con, "bob", config) is None  # its one place is taken


OTHER_PROCESS = """
import sys
from evalkit.rating.queue import Item, QueueConfig, add_annotator, add_items, claim_next, submit
from evalkit.rating.rubric import Rating
from evalkit.store import connect
con = connect(sys.argv[1])
add_annotator(con, "eve")
got = claim_next(con, "eve", QueueConfig(gold_every=0))
submit(con, "eve", got.item_id, Rating(thumbs="up"))
add_items(con, [Item("single", [{"role": "user", "content": "late"}], "x", {"n": 99}, priority=9)])
print(got.item_id)
"""


def test_writes_by_another_process_are_seen(tmp_path):
    """This process keeps the queue's state in memory; another process's writes replace it."""
    path = tmp_path / "store.duckdb"
    con = connect(path)
    add_annotator(con, "ann")
    add_items(con, [_item(n) for n in range(3)])
    first = claim_next(con, "ann", NO_GOLD)
    con.close()  # the other process needs the file
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rated_by_eve = done.stdout.strip()
    con = connect(path)
    submit(con, "ann", first.item_id, Rating(thumbs="up"))
    served = []
    while (got := claim_next(con, "ann", NO_GOLD)) is not None:
        served.append(got.item_id)
        submit(con, "ann", got.item_id, Rating(thumbs="up"))
    # The item queued there comes first (priority 9); the one eve rated there is full.
    assert served[0] == _item(99).item_id
    assert rated_by_eve not in served and len(served) == 2
    assert queue_status(con)["items"]["single"]["complete"] == 4


def test_an_item_gets_overlap_distinct_annotators_and_nobody_twice(con):
    item = _item(1, overlap=2)
    add_items(con, [item])
    for name in ("ann", "bob"):
        assert claim_next(con, name, NO_GOLD).item_id == item.item_id
        submit(con, name, item.item_id, Rating(thumbs="up"))
    assert claim_next(con, "cid", NO_GOLD) is None
    assert claim_next(con, "ann", NO_GOLD) is None
    status = queue_status(con)["items"]["single"]
    assert status["complete"] == 1 and status["started"] == 0


def test_a_skipped_item_goes_to_someone_else_but_never_back(con):
    item = _item(1)
    add_items(con, [item])
    assert claim_next(con, "ann", NO_GOLD).item_id == item.item_id
    submit(con, "ann", item.item_id, Rating(skip_reason="not my language"))
    assert claim_next(con, "ann", NO_GOLD) is None
    assert claim_next(con, "bob", NO_GOLD).item_id == item.item_id
    assert queue_status(con)["skips"] == 1


def test_a_second_submission_is_refused_not_counted(con):
    add_items(con, [_item(1)])
    got = claim_next(con, "ann", NO_GOLD)
    submit(con, "ann", got.item_id, Rating(thumbs="up"))
    with pytest.raises(EvalkitError, match="counted once"):
        submit(con, "ann", got.item_id, Rating(thumbs="down"))
    with pytest.raises(EvalkitError, match="never served to bob"):
        submit(con, "bob", got.item_id, Rating(thumbs="down"))
    assert len(load_ratings(con)) == 1 and queue_status(con)["refused"] == 2


def test_submit_and_claim_rates_and_serves_the_next_item_at_once(con):
    first, second = _item(1, priority=2), _item(2, priority=1)
    add_items(con, [first, second])
    assert claim_next(con, "ann", NO_GOLD).item_id == first.item_id
    rating_id, got = submit_and_claim(con, "ann", first.item_id, Rating(thumbs="up"), NO_GOLD)
    assert got.item_id == second.item_id
    assert claim_next(con, "ann", NO_GOLD).item_id == second.item_id  # leased: a refresh
    assert con.execute("SELECT item_id FROM ratings WHERE rating_id = ?", [rating_id]).fetchone()
    assert submit_and_claim(con, "ann", second.item_id, Rating(thumbs="up"), NO_GOLD)[1] is None
    # Refused (already rated): nothing is claimed, the rating is kept aside.
    add_items(con, [_item(3)])
    with pytest.raises(EvalkitError, match="already rated"):
        submit_and_claim(con, "ann", first.item_id, Rating(thumbs="down"), NO_GOLD)
    assert con.execute("SELECT count(*) FROM rating_leases WHERE annotator = 'ann'").fetchone() == (
        2,
    )
    assert con.execute("SELECT count(*) FROM rating_refused").fetchone() == (1,)


def test_every_rating_records_who_when_how_long_and_versions(con):
    add_items(con, [_item(1, kind="correction")])
    got = claim_next(con, "ann", NO_GOLD)
    submit(con, "ann", got.item_id, Rating(corrected="a better answer"), shown_ms=4321,
           app_version="9.9")  # fmt: skip
    (row,) = load_ratings(con)
    assert row["annotator"] == "ann" and row["submitted_at"] is not None
    assert row["shown_ms"] == 4321 and row["app_version"] == "9.9"
    assert row["guideline_version"] == load_rubric().version
    assert (row["original"], row["corrected"]) == ("answer 1", "a better answer")


@pytest.mark.parametrize(
    ("kind", "rating", "message"),
    [
        ("single", Rating(scores={**SCORES, "helpfulness": 6}), "out of range"),
        ("single", Rating(scores={**SCORES, "helpfulness": True}), "out of range"),
        ("single", Rating(scores={"helpfulnes": 4}), "did you mean: helpfulness"),
        ("single", Rating(scores={"helpfulness": 4}), "scores missing for: correctness"),
        ("single", Rating(thumbs="sideways"), "thumbs 'sideways' is not one of"),
        ("single", Rating(choice="A"), "rated with scores and/or thumbs"),
        ("pair", Rating(choice="a"), "did you mean: A"),
        ("pair", Rating(thumbs="up"), "rated with choice"),
        ("correction", Rating(corrected="  "), "corrected response is empty"),
        ("single", Rating(skip_reason=""), "non-empty reason"),
        ("single", Rating(thumbs="up", skip_reason="x"), "nothing else"),
    ],
)
def test_bad_ratings_name_what_is_wrong(con, kind, rating, message):
    add_items(con, [_item(1, kind=kind)])
    got = claim_next(con, "ann", NO_GOLD)
    with pytest.raises(EvalkitError, match=message):
        submit(con, "ann", got.item_id, rating)
    assert load_ratings(con) == [] and queue_status(con)["refused"] == 0


def test_unknown_annotator_item_and_rating_field(con):
    add_items(con, [_item(1)])
    with pytest.raises(EvalkitError, match="unknown annotator 'zed'") as err:
        claim_next(con, "zed")
    assert "evalkit rate annotator zed" in err.value.hint
    with pytest.raises(EvalkitError, match="no rating item 'nope'"):
        submit(con, "ann", "nope", Rating(thumbs="up"))
    with pytest.raises(EvalkitError, match="did you mean: thumbs"):
        Rating.from_dict({"thumb": "up"})


def test_a_store_without_a_queue_says_to_register_then_has_nothing(tmp_path):
    con = connect(tmp_path / "empty.duckdb")
    with pytest.raises(EvalkitError, match="unknown annotator 'ann'"):
        claim_next(con, "ann")
    add_annotator(con, "ann")
    assert claim_next(con, "ann") is None


def test_gold_items_are_hidden_and_scored(con):
    items = [_item(n) for n in range(4)]
    add_items(con, items)
    set_gold(con, items[0].item_id, Rating(scores=SCORES))
    config = QueueConfig(gold_every=2)
    first = claim_next(con, "ann", config)
    assert first.item_id != items[0].item_id and not hasattr(first, "gold")
    submit(con, "ann", first.item_id, Rating(scores=SCORES))
    second = claim_next(con, "ann", config)
    assert second.item_id == items[0].item_id
    submit(con, "ann", second.item_id, Rating(scores={**SCORES, "correctness": 2}))
    (stats,) = annotator_report(con)
    assert (stats.gold_checked, stats.gold_correct) == (1, 0)
    assert 0 <= stats.gold_low < stats.gold_high <= 1


@pytest.mark.parametrize(
    ("gold", "rating", "right"),
    [
        ({"choice": "A"}, {"choice": "A"}, True),
        ({"choice": "A"}, {"choice": "tie"}, False),
        ({"thumbs": "up"}, {"thumbs": "down"}, False),
        ({"scores": {"helpfulness": 4}}, {"scores": {"helpfulness": 5}}, True),
        ({"scores": {"helpfulness": 4}}, {"scores": {"helpfulness": 2}}, False),
    ],
)
def test_gold_correct(gold, rating, right):
    record = {"choice": None, "thumbs": None, "scores": None, **rating}
    assert gold_correct(gold, record) is right


def test_gold_needs_an_answer_that_can_be_checked(con):
    item = _item(1, kind="correction")
    add_items(con, [item])
    with pytest.raises(EvalkitError, match="gold needs an answer"):
        set_gold(con, item.item_id, Rating(corrected="x"))


def test_rubric_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "rubric.toml"
    bad.write_text('version = "1"\n[[dimensions]\nname = "x"\n')
    with pytest.raises(EvalkitError, match=f"{bad} is not valid TOML.*line 2"):
        load_rubric(bad)
    bad.write_text('version = "1"\n[[dimensions]]\nname = "x"\nquestion = "q"\n')
    with pytest.raises(EvalkitError, match="missing field 'anchors'"):
        load_rubric(bad)
    bad.write_text(
        'version = "1"\n[[dimensions]]\nname = "x"\nquestion = "q"\n[dimensions.anchors]\n1 = "a"\n'
    )
    with pytest.raises(EvalkitError, match="exactly the points 1 to 5"):
        load_rubric(bad)
    with pytest.raises(EvalkitError, match="cannot read rubric"):
        load_rubric(tmp_path / "missing.toml")


def test_default_rubric_has_anchored_dimensions():
    rubric = load_rubric()
    assert rubric.dimension_names == ("helpfulness", "correctness", "harmlessness")
    assert all(sorted(d.anchors) == [1, 2, 3, 4, 5] for d in rubric.dimensions)
    assert rubric.version and set(rubric.instructions) == {"single", "pair", "correction"}


def test_the_ratings_version_moves_with_each_rating_only(con):
    add_items(con, [_item(1), _item(2)])
    empty = ratings_version(con)
    assert empty == (0, None)
    first = claim_next(con, "ann", NO_GOLD).item_id
    assert ratings_version(con) == empty  # a claim is no rating
    submit(con, "ann", first, Rating(scores=SCORES))
    rated = ratings_version(con)
    submit(con, "ann", claim_next(con, "ann", NO_GOLD).item_id, Rating(skip_reason="unsure"))
    assert len({empty, rated, ratings_version(con)}) == 3


# What the queue could still serve an annotator, counted in SQL from the store's tables: the
# reference for the in-memory count.
LEFT_SQL = """
SELECT count(*) FROM rating_items i
WHERE NOT EXISTS (SELECT 1 FROM rating_leases l WHERE l.item_id = i.item_id AND l.annotator = $a)
  AND (i.gold IS NOT NULL
       OR (SELECT count(*) FROM ratings r WHERE r.item_id = i.item_id AND r.skip_reason IS NULL)
        + (SELECT count(*) FROM rating_leases l ANTI JOIN ratings r USING (lease_id)
           WHERE l.item_id = i.item_id AND l.expires_at > $now) < i.overlap)
"""
CLOSED_SQL = "SELECT count(*) FROM ratings WHERE annotator = $a AND submitted_at >= $since"


def test_standing_equals_its_count_in_sql(con):
    """Gold, overlaps of 1 to 3, skips, open and expired leases: the in-memory counts equal
    SQL's over the same tables, at several moments (later ones expire the open leases)."""
    rng = random.Random(7)
    add_items(con, [_item(n, overlap=rng.randint(1, 3)) for n in range(30)])
    for n in range(30, 33):
        add_items(con, [_item(n)])
        set_gold(con, _item(n).item_id, Rating(thumbs="up"))
    config = QueueConfig(gold_every=4, lease_ttl_s=600)
    names = ["ann", "bob", "cid"]
    for _ in range(40):
        name = rng.choice(names)
        got = claim_next(con, name, config)
        if got is not None and rng.random() < 0.8:
            skip = rng.random() < 0.25
            rating = Rating(skip_reason="unclear") if skip else Rating(thumbs="up")
            submit(con, name, got.item_id, rating)
    held = claim_next(con, "ann", config)  # ann ends holding an item of one place
    if held is not None:
        submit(con, "ann", held.item_id, Rating(thumbs="up"))
    add_items(con, [_item(99, priority=9)])
    assert claim_next(con, "ann", NO_GOLD).item_id == _item(99).item_id
    start = utc_now()
    since = [start - timedelta(days=1), start + timedelta(days=1)]
    seen = {}
    for now in (start, start + timedelta(seconds=601)):
        for name in names:
            for moment in since:
                args = {"a": name, "now": now, "since": moment}
                expected = (
                    con.execute(CLOSED_SQL, {"a": name, "since": moment}).fetchone()[0],
                    con.execute(LEFT_SQL, {"a": name, "now": now}).fetchone()[0],
                )
                assert standing(con, name, moment, now) == expected, args
                seen[now, name, moment] = expected
    # the scene tells the moments apart: some lease expires, some rating is from today
    later = start + timedelta(seconds=601)
    assert seen[later, "bob", since[0]][1] == seen[start, "bob", since[0]][1] + 1
    assert all(seen[start, n, since[0]][0] > seen[start, n, since[1]][0] == 0 for n in names)
