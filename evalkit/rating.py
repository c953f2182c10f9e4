"""The human-rating queue in the workspace store: items, leases and ratings.

An item is a single response, an A/B pair or a correction task. :func:`claim_next` leases one
item to an annotator, in this order: a hidden gold item when one is due (every
``gold_every``-th item an annotator is served), then overlap sets already started (items with a
rating but fewer than their overlap ``k``), then higher priority, then a seeded random order.

Invariants:

- an annotator holding a live lease gets the same item back when claiming again;
- a lease expires after ``lease_ttl_s`` and its place goes to the next annotator;
- nobody is served the same item twice (``UNIQUE (item_id, annotator)`` on leases);
- no item gets more than ``k`` counted ratings (gold items excepted: every annotator may see
  them once); a rating whose lease expired and whose place went to someone else is refused;
- one rating per lease (``UNIQUE (lease_id)`` on ratings): nothing is counted twice.

DuckDB is optimistic: two transactions that update the same row conflict, and the second fails.
An item's row counts its ratings (``done``); its live leases are counted from the leases. A
claim reads outside its transaction, then updates the item's row only if its ``version`` is
still the one it read, so two claims on one item never both commit on a stale count; the loser
retries (the next candidate, or a fresh read) with back-off. Every counted rating updates the
item's row too; one that arrives after its lease expired also changes the version. Refused
submissions are kept in ``rating_refused``, so nothing a person typed is lost. (No ``UPDATE ...
RETURNING`` here: in DuckDB 2.0 it raises no conflict with a concurrent update of the row, and
one of the two updates is lost.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn, TypeVar

import duckdb

from evalkit import __version__
from evalkit.errors import EvalkitError
from evalkit.rubric import Rating, Rubric, check_choice, load_rubric
from evalkit.store import transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

KINDS = ("single", "pair", "correction")
CONFLICT_TIMEOUT_S = 10.0  # how long to retry write conflicts before giving up
# Items a claim reads in order: when another annotator took the first meanwhile, the next is
# tried in the same transaction instead of reading again.
CANDIDATES = 8

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rating_annotators (
        annotator VARCHAR PRIMARY KEY,
        added_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rating_items (
        item_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        prompt JSON NOT NULL,
        response_a VARCHAR NOT NULL,
        response_b VARCHAR,
        source_a VARCHAR,
        source_b VARCHAR,
        source JSON NOT NULL,
        group_id VARCHAR NOT NULL,
        slice VARCHAR,
        priority INTEGER NOT NULL,
        overlap INTEGER NOT NULL,
        gold JSON,
        batch VARCHAR,
        created_at TIMESTAMP NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS rating_leases (
        lease_id VARCHAR PRIMARY KEY,
        item_id VARCHAR NOT NULL,
        annotator VARCHAR NOT NULL,
        gold BOOLEAN NOT NULL,
        claimed_at TIMESTAMP NOT NULL,
        expires_at TIMESTAMP NOT NULL,
        closed_at TIMESTAMP,
        UNIQUE (item_id, annotator)
    )""",
    """CREATE TABLE IF NOT EXISTS ratings (
        rating_id VARCHAR PRIMARY KEY,
        lease_id VARCHAR NOT NULL UNIQUE,
        item_id VARCHAR NOT NULL,
        annotator VARCHAR NOT NULL,
        scores JSON,
        thumbs VARCHAR,
        choice VARCHAR,
        original VARCHAR,
        corrected VARCHAR,
        skip_reason VARCHAR,
        shown_ms BIGINT NOT NULL,
        guideline_version VARCHAR NOT NULL,
        app_version VARCHAR NOT NULL,
        claimed_at TIMESTAMP NOT NULL,
        submitted_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rating_refused (
        item_id VARCHAR,
        annotator VARCHAR,
        rating JSON NOT NULL,
        reason VARCHAR NOT NULL,
        shown_ms BIGINT,
        guideline_version VARCHAR,
        app_version VARCHAR,
        refused_at TIMESTAMP NOT NULL
    )""",
)

# A lease is open until a rating or a skip closes it, and live while open and unexpired.
LIVE = "{l}.closed_at IS NULL AND {l}.expires_at > $now"

# What a claim knows of the annotator: how many items (and gold items) they were served, and
# the item of their live lease, if any, other than the one they are submitting ($submitting).
ANNOTATOR_STATE = f"""
SELECT count(*), count(*) FILTER (WHERE gold),
       min(item_id) FILTER (WHERE {LIVE.format(l="l")} AND item_id IS DISTINCT FROM $submitting)
FROM rating_leases l WHERE annotator = $annotator
"""

# The item of a lease, shown again on a refresh.
LEASED = """
SELECT i.item_id, i.kind, i.prompt, i.response_a, i.response_b, l.expires_at
FROM rating_leases l JOIN rating_items i USING (item_id)
WHERE l.item_id = $item AND l.annotator = $annotator
"""

# The first $candidates items for an annotator, in serving order: gold when due, then items
# already started, then priority, then a seeded random order. An item qualifies when the
# annotator was never served it and its ratings plus live leases leave room for one more.
CANDIDATES_QUERY = f"""
SELECT i.item_id, i.version, i.gold IS NOT NULL, i.kind, i.prompt, i.response_a, i.response_b
FROM rating_items i LEFT JOIN (
    SELECT item_id, count(*) FILTER (WHERE {LIVE.format(l="l")}) AS live,
           bool_or(annotator = $annotator) AS mine
    FROM rating_leases l GROUP BY item_id
) l USING (item_id)
WHERE NOT coalesce(l.mine, false)
  AND CASE WHEN i.gold IS NULL THEN i.done + coalesce(l.live, 0) < i.overlap ELSE $gold_due END
ORDER BY i.gold IS NOT NULL DESC, i.done > 0 DESC, i.priority DESC,
         hash(i.item_id, $annotator, $seed)
LIMIT $candidates
"""

# What a submission is checked against: the item and the annotator's lease on it.
SUBMISSION_STATE = """
SELECT i.kind, i.response_a, l.lease_id, l.claimed_at, l.expires_at, l.closed_at
FROM rating_items i
LEFT JOIN rating_leases l ON l.item_id = i.item_id AND l.annotator = $annotator
WHERE i.item_id = $item
"""

# Whether an item has no room left for a late rating: its ratings plus others' live leases.
ITEM_FULL = f"""
SELECT i.gold IS NULL AND i.done + (
    SELECT count(*) FROM rating_leases l
    WHERE l.item_id = i.item_id AND l.annotator <> $annotator AND {LIVE.format(l="l")}
) >= i.overlap
FROM rating_items i WHERE i.item_id = $item
"""


@dataclass(frozen=True)
class QueueConfig:
    """How items are handed out."""

    # Long enough to read and rate a long answer; short enough that an abandoned item comes
    # back within the same working session.
    lease_ttl_s: float = 600.0
    # Every gold_every-th item an annotator is served is a hidden gold item (when one is left
    # for them); 0 serves none.
    gold_every: int = 10
    seed: int = 0  # the random order among otherwise equal items

    def __post_init__(self) -> None:
        if self.lease_ttl_s <= 0:
            raise EvalkitError(f"lease TTL {self.lease_ttl_s} s: must be positive")
        if self.gold_every < 0:
            raise EvalkitError(f"gold every {self.gold_every} items: must be 0 or more")


@dataclass(frozen=True)
class Item:
    """An item to queue: the conversation, the response(s) and where they came from.

    ``source`` identifies the item (queuing the same source twice adds it once) and is its
    lineage; ``source_a``/``source_b`` name who wrote each response (a run id, a model
    version). For pairs, A is the response shown first.
    """

    kind: str
    prompt: list[dict]
    response_a: str
    source: dict
    response_b: str | None = None
    source_a: str | None = None
    source_b: str | None = None
    slice: str | None = None
    priority: int = 0
    overlap: int = 1

    def __post_init__(self) -> None:
        check_choice(self.kind, KINDS, "item kind")
        if (self.kind == "pair") != (self.response_b is not None):
            raise EvalkitError(
                f"a {self.kind} item takes {'two' if self.kind == 'pair' else 'one'} response(s)"
            )
        if self.overlap < 1:
            raise EvalkitError(f"overlap {self.overlap}: an item needs at least one rating")

    @property
    def item_id(self) -> str:
        return _digest([self.kind, self.source])

    @property
    def group_id(self) -> str:
        """The prompt's id: ratings of one prompt are resampled together."""
        return _digest(self.prompt)


@dataclass(frozen=True)
class Assignment:
    """An item leased to one annotator, as the app shows it; gold items look like any other."""

    item_id: str
    kind: str
    prompt: list[dict]
    response_a: str
    response_b: str | None
    expires_at: datetime


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def utc_now() -> datetime:
    """Naive UTC, as the store keeps its timestamps."""
    return datetime.now(UTC).replace(tzinfo=None)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for statement in SCHEMA:
        con.execute(statement)


class _Changed(Exception):
    """What was read has changed before the transaction could use it: read again."""


def _retrying(
    con: duckdb.DuckDBPyConnection,
    write: Callable[..., T],
    read: Callable[[], object] | None = None,
) -> T:
    """Run ``write`` in one transaction, again with back-off while it conflicts.

    ``read``, when given, runs first, outside the transaction, and ``write`` gets its result: a
    long query then does not widen the window in which concurrent writes conflict. A conflict
    retries ``write`` on the same result (it checks what it relies on); ``write`` raises
    :class:`_Changed` to have ``read`` run again.
    """
    deadline = time.monotonic() + CONFLICT_TIMEOUT_S
    delay = 0.001
    args: tuple | None = None
    while True:
        try:
            if args is None:
                args = (read(),) if read else ()
            with transaction(con):
                return write(*args)
        except (duckdb.TransactionException, duckdb.ConstraintException, _Changed) as exc:
            if isinstance(exc, _Changed):
                args = None
            if time.monotonic() >= deadline:
                raise EvalkitError(
                    f"the rating queue stayed busy for {CONFLICT_TIMEOUT_S:.0f} s: {exc}",
                    hint="try again; nothing was written",
                ) from exc
            log.debug("write conflict, retrying: %s", exc)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.05)
        except duckdb.CatalogException as exc:
            raise EvalkitError(
                "the store has no rating queue yet",
                hint="queue items first: `evalkit rate enqueue ...`",
            ) from exc


def add_annotator(con: duckdb.DuckDBPyConnection, annotator: str) -> bool:
    """Register an annotator; returns False when already registered."""
    if not annotator.strip():
        raise EvalkitError("an annotator needs a non-empty name")
    ensure_schema(con)
    return _retrying(
        con,
        lambda: (
            con.execute(
                "INSERT INTO rating_annotators VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                [annotator, utc_now()],
            ).fetchone()
            is not None
        ),
    )


def _check_annotator(con: duckdb.DuckDBPyConnection, annotator: str) -> None:
    if not con.execute(
        "SELECT 1 FROM rating_annotators WHERE annotator = ?", [annotator]
    ).fetchone():
        _unknown_annotator(annotator)


def _unknown_annotator(annotator: str) -> None:
    raise EvalkitError(
        f"unknown annotator {annotator!r}",
        hint=f"register them first: `evalkit rate annotator {annotator}`",
    )


def add_items(
    con: duckdb.DuckDBPyConnection, items: Iterable[Item], *, batch: str | None = None
) -> int:
    """Queue ``items`` in one transaction; items already queued are left as they are.

    Returns how many were new.
    """
    ensure_schema(con)
    unique = {item.item_id: item for item in items}
    now = utc_now()

    def insert() -> int:
        known = {
            row[0]
            for row in con.execute(
                "SELECT item_id FROM rating_items WHERE list_contains(?, item_id)", [list(unique)]
            ).fetchall()
        }
        rows = [
            (
                item_id,
                it.kind,
                json.dumps(it.prompt, ensure_ascii=False),
                it.response_a,
                it.response_b,
                it.source_a,
                it.source_b,
                json.dumps(it.source, sort_keys=True),
                it.group_id,
                it.slice,
                it.priority,
                it.overlap,
                None,
                batch,
                now,
            )
            for item_id, it in sorted(unique.items())
            if item_id not in known
        ]
        if rows:
            con.executemany(
                f"INSERT INTO rating_items VALUES ({', '.join('?' * 15)}, 0, 0)",
                rows,
            )
        return len(rows)

    return _retrying(con, insert)


def _item(con: duckdb.DuckDBPyConnection, item_id: str) -> tuple:
    row = con.execute(
        "SELECT kind, response_a FROM rating_items WHERE item_id = ?", [item_id]
    ).fetchone()
    if row is None:
        raise EvalkitError(
            f"no rating item {item_id!r} in the queue", hint="`evalkit rate status` lists the queue"
        )
    return row


def set_gold(
    con: duckdb.DuckDBPyConnection, item_id: str, answer: Rating, *, rubric: Rubric | None = None
) -> None:
    """Make an item a hidden gold item with a known ``answer`` (single and pair items)."""
    ensure_schema(con)
    kind, _ = _item(con, item_id)
    if kind == "correction" or answer.skip_reason is not None:
        raise EvalkitError(
            f"item {item_id}: gold needs an answer that can be checked (a score, thumbs or choice)"
        )
    answer.check(kind, rubric or load_rubric())
    gold = {k: v for k, v in asdict(answer).items() if v not in (None, {})}
    _retrying(
        con,
        lambda: con.execute(
            "UPDATE rating_items SET gold = ? WHERE item_id = ?", [json.dumps(gold), item_id]
        ),
    )


@dataclass(frozen=True)
class _Claim:
    """A claim in two steps: what it reads outside the transaction, what it writes inside."""

    annotator: str
    config: QueueConfig
    submitting: str | None = None  # the item being submitted in the same transaction

    def read(self, con: duckdb.DuckDBPyConnection) -> tuple[datetime, Assignment | None, list]:
        now = utc_now()
        served, gold_served, held = con.execute(
            ANNOTATOR_STATE,
            {"now": now, "annotator": self.annotator, "submitting": self.submitting},
        ).fetchone()
        if held is not None:
            *shown, expires_at = con.execute(
                LEASED, {"item": held, "annotator": self.annotator}
            ).fetchone()
            return now, _assignment(*shown, expires_at), []
        if served == 0:
            _check_annotator(con, self.annotator)
        # Gold is due when fewer than (n + 1) // gold_every of the annotator's n items were gold.
        every = self.config.gold_every
        params = {
            "now": now,
            "annotator": self.annotator,
            "gold_due": every > 0 and gold_served < (served + 1) // every,
            "seed": self.config.seed,
            "candidates": CANDIDATES,
        }
        rows = con.execute(CANDIDATES_QUERY, params).fetchall()
        # The lease starts once the read is done: whatever it saw had happened by then.
        return utc_now(), None, rows

    def write(
        self, con: duckdb.DuckDBPyConnection, state: tuple[datetime, Assignment | None, list]
    ) -> Assignment | None:
        now, held, rows = state
        if held is not None or not rows:
            return held
        for item_id, version, gold, *shown in rows:
            # The row is updated only if no claim (nor late rating) of the item committed since it
            # was read; one committing concurrently makes this update conflict.
            if con.execute(
                "UPDATE rating_items SET version = version + 1 WHERE item_id = ? AND version = ?",
                [item_id, version],
            ).fetchone()[0]:
                expires_at = now + timedelta(seconds=self.config.lease_ttl_s)
                con.execute(
                    "INSERT INTO rating_leases VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    [uuid.uuid4().hex, item_id, self.annotator, gold, now, expires_at],
                )
                return _assignment(item_id, *shown, expires_at)
        raise _Changed("every candidate was claimed meanwhile")


def claim_next(
    con: duckdb.DuckDBPyConnection, annotator: str, config: QueueConfig | None = None
) -> Assignment | None:
    """Lease the next item to ``annotator``; None when nothing is left for them.

    Claiming again while the lease is live returns the same item (a page refresh).
    """
    claim = _Claim(annotator, config or QueueConfig())
    return _retrying(con, lambda state: claim.write(con, state), lambda: claim.read(con))


def _assignment(item_id, kind, prompt, response_a, response_b, expires_at) -> Assignment:
    return Assignment(item_id, kind, json.loads(prompt), response_a, response_b, expires_at)


def _item_full(con, item_id: str, annotator: str, now: datetime) -> bool:
    params = {"item": item_id, "annotator": annotator, "now": now}
    return con.execute(ITEM_FULL, params).fetchone()[0]


@dataclass(frozen=True)
class _Submission:
    """A rating to store, in two steps like a claim, and kept aside when refused."""

    annotator: str
    item_id: str
    rating: Rating
    rubric: Rubric
    shown_ms: int | None
    app_version: str
    rating_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def read(self, con: duckdb.DuckDBPyConnection) -> tuple | str:
        """The lease to close, or why there is none."""
        annotator, item_id = self.annotator, self.item_id
        state = con.execute(SUBMISSION_STATE, {"annotator": annotator, "item": item_id}).fetchone()
        if state is None:
            raise EvalkitError(
                f"no rating item {item_id!r} in the queue",
                hint="`evalkit rate status` shows the queue",
            )
        kind, response_a, lease_id, claimed_at, expires_at, closed_at = state
        self.rating.check(kind, self.rubric)
        if lease_id is None:
            _check_annotator(con, annotator)
            return f"item {item_id} was never served to {annotator}: claim it first"
        if closed_at is not None:
            return (
                f"{annotator} already rated or skipped item {item_id} at "
                f"{closed_at:%Y-%m-%d %H:%M:%S} UTC: a rating is counted once"
            )
        return kind, response_a, lease_id, claimed_at, expires_at

    def write(self, con: duckdb.DuckDBPyConnection, state: tuple | str) -> str | None:
        """Store the rating; returns why it was refused, or None."""
        if isinstance(state, str):
            return state
        kind, response_a, lease_id, claimed_at, expires_at = state
        annotator, item_id, rating = self.annotator, self.item_id, self.rating
        counted = rating.skip_reason is None
        now = utc_now()
        if counted and expires_at <= now and _item_full(con, item_id, annotator, now):
            return (
                f"the lease of {annotator} on item {item_id} expired at "
                f"{expires_at:%Y-%m-%d %H:%M:%S} UTC and the item went to another annotator"
            )
        if not con.execute(
            "UPDATE rating_leases SET closed_at = ? WHERE lease_id = ? AND closed_at IS NULL",
            [now, lease_id],
        ).fetchone()[0]:
            raise _Changed("the lease was closed meanwhile")
        if counted:
            # A late rating takes a place claims could see as free: it changes the version, so
            # a claim that read the item before cannot also take that place.
            con.execute(
                "UPDATE rating_items SET done = done + 1, version = version + ? WHERE item_id = ?",
                [int(expires_at <= now), item_id],
            )
        shown_ms = self.shown_ms
        if shown_ms is None:
            shown_ms = (now - claimed_at) // timedelta(milliseconds=1)
        con.execute(
            "INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                self.rating_id,
                lease_id,
                item_id,
                annotator,
                json.dumps(rating.scores) if rating.scores else None,
                rating.thumbs,
                rating.choice,
                response_a if kind == "correction" and counted else None,
                rating.corrected,
                rating.skip_reason,
                shown_ms,
                self.rubric.version,
                self.app_version,
                claimed_at,
                now,
            ],
        )
        return None

    def refuse(self, con: duckdb.DuckDBPyConnection, refusal: str) -> NoReturn:
        """Keep the refused rating in ``rating_refused`` and say why it was not counted."""
        row = [
            self.item_id,
            self.annotator,
            json.dumps(asdict(self.rating)),
            refusal,
            self.shown_ms,
            self.rubric.version,
            self.app_version,
            utc_now(),
        ]
        _retrying(
            con,
            lambda: con.execute(f"INSERT INTO rating_refused VALUES ({', '.join('?' * 8)})", row),
        )
        raise EvalkitError(
            f"rating refused: {refusal}",
            hint="it was not counted; its text is kept in the store (rating_refused), "
            "so nothing is lost. Claim the next item.",
        )


def submit(
    con: duckdb.DuckDBPyConnection,
    annotator: str,
    item_id: str,
    rating: Rating,
    *,
    rubric: Rubric | None = None,
    shown_ms: int | None = None,
    app_version: str = __version__,
) -> str:
    """Store ``annotator``'s rating of a leased item; returns the rating id.

    ``shown_ms`` is how long the app showed the item (default: the time since it was claimed).
    A rating that cannot be counted (no lease, already rated, lease expired and passed on) is
    refused with an :class:`EvalkitError` and kept in ``rating_refused``.
    """
    sub = _Submission(annotator, item_id, rating, rubric or load_rubric(), shown_ms, app_version)
    refusal = _retrying(con, lambda state: sub.write(con, state), lambda: sub.read(con))
    if refusal is not None:
        sub.refuse(con, refusal)
    return sub.rating_id


def submit_and_claim(
    con: duckdb.DuckDBPyConnection,
    annotator: str,
    item_id: str,
    rating: Rating,
    config: QueueConfig | None = None,
    *,
    rubric: Rubric | None = None,
    shown_ms: int | None = None,
    app_version: str = __version__,
) -> tuple[str, Assignment | None]:
    """:func:`submit`, then :func:`claim_next`, in one transaction: what the app calls once an
    item is rated. Returns the rating id and the next item (None when nothing is left).

    One commit instead of two; a refused rating claims nothing and raises as :func:`submit`.
    """
    sub = _Submission(annotator, item_id, rating, rubric or load_rubric(), shown_ms, app_version)
    claim = _Claim(annotator, config or QueueConfig(), submitting=item_id)

    def write(state: tuple) -> tuple[str | None, Assignment | None]:
        refusal = sub.write(con, state[0])
        return refusal, None if refusal else claim.write(con, state[1])

    refusal, got = _retrying(con, write, lambda: (sub.read(con), claim.read(con)))
    if refusal is not None:
        sub.refuse(con, refusal)
    return sub.rating_id, got
