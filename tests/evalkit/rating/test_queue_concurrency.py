"""Many annotators on one DuckDB file at once: the queue's invariants, checked from the tables."""

import random
import threading
import time
from collections import defaultdict

from evalkit.errors import EvalkitError
from evalkit.rating.queue import (
    Item,
    QueueConfig,
    add_annotator,
    add_items,
    claim_next,
    set_gold,
    submit,
    submit_and_claim,
    utc_now,
)
from evalkit.rating.rubric import Rating, load_rubric
from evalkit.store import connect

THREADS = 16
CLAIMS_PER_THREAD = 320  # 5,120 claims in all
VISITORS = 4  # per thread: annotators who claim one item and come back after their lease expired
TTL_S = 3.0  # long next to a claim, even on a loaded machine; abandoned leases wait it out


def _items(n):
    return [
        Item(
            "single",
            [{"role": "user", "content": f"question {i}"}],
            f"answer {i}",
            {"n": i},
            priority=i % 3,
            overlap=2 + i % 3,
        )
        for i in range(n)
    ]


def _submit(con, name, item_id, rating, rubric, record):
    try:
        record["accepted"].append(submit(con, name, item_id, rating, rubric=rubric))
    except EvalkitError as exc:
        if "went to another annotator" not in str(exc):
            raise
        record["refused"].append((name, item_id))


def _annotator(path, name, seed, record, errors):
    """Claim, then rate or skip; now and then claim as a visitor who leaves and rates late."""
    con = connect(path)
    rng = random.Random(seed)
    config = QueueConfig(lease_ttl_s=TTL_S, gold_every=7, seed=1)
    rubric = load_rubric()
    visitors = [f"{name}/visitor-{k}" for k in range(VISITORS)]
    left, got = [], None
    try:
        for _ in range(CLAIMS_PER_THREAD):
            if visitors and rng.random() < 0.02:  # claims, walks away, comes back after the TTL
                visitor = visitors.pop()
                leased = claim_next(con, visitor, config)
                record["claims"].append(visitor)
                left.append((visitor, leased.item_id))
                continue
            if got is None:
                got = claim_next(con, name, config)
                record["claims"].append(name)
                if got is None:
                    break
            if rng.random() < 0.05:  # a page refresh hands back the same item
                live = utc_now() < got.expires_at
                again = claim_next(con, name, config)
                record["claims"].append(name)
                if live and utc_now() < got.expires_at and again.item_id != got.item_id:
                    errors.append(f"{name}: refresh gave {again.item_id}, not {got.item_id}")
            rating = Rating(skip_reason="unsure") if rng.random() < 0.06 else Rating(thumbs="up")
            if rng.random() < 0.5:  # the app's call: rate, and get the next item in one go
                rating_id, got = submit_and_claim(
                    con, name, got.item_id, rating, config, rubric=rubric
                )
                record["accepted"].append(rating_id)
                record["claims"].append(name)
            else:
                _submit(con, name, got.item_id, rating, rubric, record)
                got = None
        time.sleep(TTL_S * 1.2)
        for visitor, item_id in left:
            _submit(con, visitor, item_id, Rating(thumbs="down"), rubric, record)
    except Exception as exc:  # surfaced by the main thread
        errors.append(f"{name}: {exc!r}")
    finally:
        con.close()


def test_concurrent_annotators_keep_every_invariant(tmp_path):
    path = tmp_path / "store.duckdb"
    con = connect(path)
    items = _items(1900)
    add_items(con, items)
    for item in items[:20]:
        set_gold(con, item.item_id, Rating(thumbs="up"))
    names = [f"annotator-{k:02d}" for k in range(THREADS)]
    for name in names:
        for who in [name] + [f"{name}/visitor-{k}" for k in range(VISITORS)]:
            add_annotator(con, who)
    record, errors = defaultdict(list), []
    threads = [
        threading.Thread(target=_annotator, args=(path, name, k, record, errors))
        for k, name in enumerate(names)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len(record["claims"]) >= 5000

    leases = con.execute(
        "SELECT lease_id, item_id, annotator, gold, claimed_at, expires_at FROM rating_leases"
    ).fetchall()
    ratings = con.execute(
        "SELECT rating_id, lease_id, item_id, annotator, skip_reason, submitted_at FROM ratings"
    ).fetchall()
    overlap = dict(con.execute("SELECT item_id, overlap FROM rating_items").fetchall())
    gold = {
        i
        for (i,) in con.execute(
            "SELECT item_id FROM rating_items WHERE gold IS NOT NULL"
        ).fetchall()
    }

    # Every accepted submission is stored once; every refused one is kept, none counted.
    assert record["refused"], "no late rating was refused: the expiry path went untested"
    assert sorted(record["accepted"]) == sorted(r[0] for r in ratings)
    refused = con.execute("SELECT annotator, item_id FROM rating_refused").fetchall()
    assert sorted(refused) == sorted(record["refused"])
    assert not set(refused) & {(r[3], r[2]) for r in ratings}
    # Nobody was served an item twice; every lease has one owner and at most one rating.
    assert len({(lease[1], lease[2]) for lease in leases}) == len(leases)
    by_lease = {lease[0]: lease for lease in leases}
    assert len({r[1] for r in ratings}) == len(ratings)
    for rating in ratings:
        assert by_lease[rating[1]][1:3] == rating[2:4]
    # No item has more counted ratings than its overlap (gold items go to everyone once).
    counted = defaultdict(int)
    for r in ratings:
        counted[r[2]] += r[4] is None
    assert all(counted[i] <= overlap[i] for i in counted if i not in gold)
    assert any(counted[i] == overlap[i] for i in counted)
    # At each claim, the counted ratings plus the other live leases of that item left room.
    closed_at = {r[1]: r[5] for r in ratings}
    leases_of, counted_at = defaultdict(list), defaultdict(list)
    for lease in leases:
        leases_of[lease[1]].append(lease)
    for r in ratings:
        if r[4] is None:
            counted_at[r[2]].append(r[5])
    for lease_id, item_id, _, is_gold, claimed_at, _ in leases:
        if is_gold:
            continue
        done = sum(1 for t in counted_at[item_id] if t < claimed_at)
        live = sum(
            1
            for other, _, _, _, start, expiry in leases_of[item_id]
            if other != lease_id and start < claimed_at < min(expiry, closed_at.get(other, expiry))
        )
        assert done + live < overlap[item_id], (lease_id, done, live)
    # Gold was served to annotators as configured (every 7th item), each gold item once per person.
    gold_leases = [lease for lease in leases if lease[3]]
    assert gold_leases and all(lease[1] in gold for lease in gold_leases)
    con.close()
