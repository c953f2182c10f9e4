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

Leases and ratings are append-only: a lease is closed by the rating (or skip) that names it,
and an item's count is its counted ratings. The process keeps the queue's state, a fold over
those tables, in memory (:class:`_Queue`, one per store file), and its writers take turns on
it: a claim decides in memory and writes one lease row, a submission one rating row, so an
annotator waits for one short transaction, not for queries over the whole queue. Every write
also replaces the token in ``rating_queue`` when it still holds the value this process last
wrote: a write by another process (or connection around this module) changes the token, and
the next write here reads the state again and decides again. Write the queue's tables through
this module only. Refused submissions are kept in ``rating_refused``, so nothing a person
typed is lost.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import duckdb

from evalkit import __version__
from evalkit.errors import EvalkitError
from evalkit.rating.rubric import ITEM_KINDS, Rating, Rubric, check_choice, load_rubric
from evalkit.store import insert_columns, transaction

log = logging.getLogger(__name__)

KINDS = ITEM_KINDS
CONFLICT_TIMEOUT_S = 10.0  # how long to retry write conflicts before giving up

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
        created_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rating_leases (
        lease_id VARCHAR PRIMARY KEY,
        item_id VARCHAR NOT NULL,
        annotator VARCHAR NOT NULL,
        gold BOOLEAN NOT NULL,
        claimed_at TIMESTAMP NOT NULL,
        expires_at TIMESTAMP NOT NULL,
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
    # The last writer's token (see the module docstring): one row.
    """CREATE TABLE IF NOT EXISTS rating_queue (
        id INTEGER PRIMARY KEY,
        token VARCHAR NOT NULL
    )""",
    "INSERT INTO rating_queue VALUES (0, 'new') ON CONFLICT DO NOTHING",
)

# Leases neither rated nor skipped, and not yet expired at $now.
LIVE_LEASES = """
SELECT count(*) FROM rating_leases l ANTI JOIN ratings r USING (lease_id)
WHERE l.expires_at > $now
"""

# The queue's state: items, then leases with the rating that closed each (if any).
LOAD_ITEMS = "SELECT item_id, kind, priority, overlap, gold IS NOT NULL FROM rating_items"
LOAD_LEASES = """
SELECT l.lease_id, l.item_id, l.annotator, l.gold, l.claimed_at, l.expires_at,
       r.submitted_at, r.skip_reason IS NULL
FROM rating_leases l LEFT JOIN ratings r USING (lease_id)
ORDER BY l.claimed_at
"""
SHOWN = "SELECT kind, prompt, response_a, response_b FROM rating_items WHERE item_id = ?"
INSERT_LEASE = (
    "INSERT INTO rating_leases (lease_id, item_id, annotator, gold, claimed_at, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_RATING = "INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ITEM_COLUMNS = (
    "item_id, kind, prompt, response_a, response_b, source_a, source_b, source, group_id, "
    "slice, priority, overlap, gold, batch, created_at"
)
ITEM_TYPES = [  # of ITEM_COLUMNS, in order
    "VARCHAR",
    "VARCHAR",
    "JSON",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "VARCHAR",
    "JSON",
    "VARCHAR",
    "VARCHAR",
    "INTEGER",
    "INTEGER",
    "JSON",
    "VARCHAR",
    "TIMESTAMP",
]


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
    if not con.execute("SELECT count(*) FROM rating_queue").fetchone()[0]:
        # A random first token: a store made anew at the same path is never taken for the old.
        con.execute(
            "INSERT INTO rating_queue VALUES (0, ?) ON CONFLICT DO NOTHING", [uuid.uuid4().hex]
        )


@dataclass
class _Lease:
    lease_id: str
    item_id: str
    gold: bool
    claimed_at: datetime
    expires_at: datetime
    closed_at: datetime | None = None  # when its rating or skip came


@dataclass
class _ItemState:
    kind: str
    priority: int
    overlap: int
    gold: bool
    done: int = 0  # counted ratings
    open: dict[str, datetime] = field(default_factory=dict)  # annotator -> expiry, open leases

    def has_room(self, now: datetime) -> bool:
        """Whether its counted ratings and live leases leave a place (always, for gold)."""
        live = sum(1 for expires in self.open.values() if expires > now)
        return self.gold or self.done + live < self.overlap

    @property
    def bucket(self) -> tuple[bool, int]:
        """Its place in the serving order after gold: started sets first, then by priority."""
        return self.done > 0, self.priority


@dataclass
class _AnnotatorState:
    leases: dict[str, _Lease] = field(default_factory=dict)  # every item served, by item
    open: set[str] = field(default_factory=set)  # items leased, neither rated nor skipped
    gold_served: int = 0


@dataclass
class _Plan:
    """What an operation writes in one transaction, and what that changes in memory once
    committed. A plan that writes nothing (a refusal, nothing left) is answered only once the
    state is known to be current."""

    result: object = None
    writes: list[Callable[[duckdb.DuckDBPyConnection], object]] = field(default_factory=list)
    applies: list[Callable[[], None]] = field(default_factory=list)

    def then(self, other: _Plan, result: object) -> _Plan:
        return _Plan(result, self.writes + other.writes, self.applies + other.applies)


class _Stale(Exception):
    """Another writer changed the queue since this process read it."""


class _Queue:
    """The queue's state in this process (a fold over the store's tables), and the lock its
    writers take turns on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token: str | None = None  # None: read the state again before deciding
        self.seed = 0
        self.items: dict[str, _ItemState] = {}
        self.annotators: dict[str, _AnnotatorState] = {}
        self.known: set[str] = set()  # registered annotators
        self.gold: list[tuple[int, str]] = []  # (order key, item id), sorted
        self.buckets: dict[tuple[bool, int], list[tuple[int, str]]] = {}

    def run(self, con: duckdb.DuckDBPyConnection, decide: Callable[[], _Plan]) -> object:
        """Decide on the current state and write the plan, again while another writer
        intervenes (then on the state read anew)."""
        deadline = time.monotonic() + CONFLICT_TIMEOUT_S
        delay = 0.001
        with self.lock:
            while True:
                try:
                    fresh = self.token is None
                    if fresh:
                        self._load(con)
                    try:
                        plan = decide()
                    except EvalkitError:
                        if fresh or self._current(con):
                            raise
                        continue
                    if not plan.writes:
                        if fresh or self._current(con):
                            return plan.result
                        continue
                    token = uuid.uuid4().hex
                    with transaction(con):
                        if not con.execute(
                            "UPDATE rating_queue SET token = ? WHERE token = ?", [token, self.token]
                        ).fetchone()[0]:
                            raise _Stale
                        for write in plan.writes:
                            write(con)
                    self.token = token
                    for apply in plan.applies:
                        apply()
                    return plan.result
                except (duckdb.TransactionException, duckdb.ConstraintException, _Stale) as exc:
                    self.token = None
                    if time.monotonic() >= deadline:
                        raise EvalkitError(
                            f"the rating queue stayed busy for {CONFLICT_TIMEOUT_S:.0f} s: {exc!r}",
                            hint="try again; nothing was written",
                        ) from exc
                    if not isinstance(exc, _Stale):
                        log.debug("write conflict, retrying: %s", exc)
                        time.sleep(delay * (1 + random.random()))
                        delay = min(delay * 2, 0.05)

    def _current(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether nobody else wrote since this process did; if not, forget the state."""
        if con.execute("SELECT token FROM rating_queue").fetchone()[0] != self.token:
            self.token = None
        return self.token is not None

    def _load(self, con: duckdb.DuckDBPyConnection) -> None:
        ensure_schema(con)
        with transaction(con):
            (token,) = con.execute("SELECT token FROM rating_queue").fetchone()
            items = con.execute(LOAD_ITEMS).fetchall()
            leases = con.execute(LOAD_LEASES).fetchall()
            known = con.execute("SELECT annotator FROM rating_annotators").fetchall()
        self.items = {item_id: _ItemState(*state) for item_id, *state in items}
        self.annotators = {}
        self.known = {name for (name,) in known}
        for lease_id, item_id, annotator, gold, claimed_at, expires_at, closed, counted in leases:
            if item_id in self.items:
                self.lease(annotator, _Lease(lease_id, item_id, gold, claimed_at, expires_at))
                if closed is not None:
                    self._closed(annotator, item_id, closed, counted)
        self.order(self.seed)
        self.token = token

    def _key(self, name: str) -> int:
        digest = hashlib.blake2b(f"{self.seed}\0{name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest)

    def _entries(self, item: _ItemState) -> list[tuple[int, str]] | None:
        """The list an item is served from; None once it has all its ratings."""
        if item.gold:
            return self.gold
        if item.done < item.overlap:
            return self.buckets.setdefault(item.bucket, [])
        return None

    def order(self, seed: int) -> None:
        """Sort the items to serve in the seeded order."""
        self.seed, self.gold, self.buckets = seed, [], {}
        for item_id, item in self.items.items():
            entries = self._entries(item)
            if entries is not None:
                entries.append((self._key(item_id), item_id))
        self.gold.sort()
        for entries in self.buckets.values():
            entries.sort()

    def _place(self, item_id: str, add: bool) -> None:
        """Put an item into (or take it out of) the list it is served from."""
        item = self.items[item_id]
        entries = self._entries(item)
        if entries is None:
            return
        entry = (self._key(item_id), item_id)
        if add:
            bisect.insort(entries, entry)
        else:
            del entries[bisect.bisect_left(entries, entry)]
            if not entries and entries is not self.gold:
                del self.buckets[item.bucket]

    def add(self, item_id: str, kind: str, priority: int, overlap: int) -> None:
        self.items[item_id] = _ItemState(kind, priority, overlap, gold=False)
        self._place(item_id, add=True)

    def make_gold(self, item_id: str) -> None:
        self._place(item_id, add=False)
        self.items[item_id].gold = True
        self._place(item_id, add=True)

    def lease(self, annotator: str, lease: _Lease) -> None:
        state = self.annotators.setdefault(annotator, _AnnotatorState())
        state.leases[lease.item_id] = lease
        state.open.add(lease.item_id)
        state.gold_served += lease.gold
        self.items[lease.item_id].open[annotator] = lease.expires_at

    def close(self, annotator: str, item_id: str, at: datetime, counted: bool) -> None:
        self._place(item_id, add=False)
        self._closed(annotator, item_id, at, counted)
        self._place(item_id, add=True)

    def _closed(self, annotator: str, item_id: str, at: datetime, counted: bool) -> None:
        state, item = self.annotators[annotator], self.items[item_id]
        state.leases[item_id].closed_at = at
        state.open.discard(item_id)
        del item.open[annotator]
        item.done += counted

    def held(self, annotator: str, now: datetime, but: str | None) -> _Lease | None:
        """The annotator's live lease, other than on item ``but``."""
        state = self.annotators.get(annotator)
        for item_id in state.open if state else ():
            lease = state.leases[item_id]
            if lease.expires_at > now and item_id != but:
                return lease
        return None

    def standing(self, annotator: str, since: datetime, now: datetime) -> tuple[int, int]:
        """Items the annotator rated or skipped since ``since``, and items the queue could still
        serve them at ``now`` (never served to them, with room)."""
        state = self.annotators.get(annotator, _AnnotatorState())
        closed = sum(
            lease.closed_at is not None and lease.closed_at >= since
            for lease in state.leases.values()
        )
        left = sum(
            item_id not in state.leases and item.has_room(now)
            for item_id, item in self.items.items()
        )
        return closed, left

    def next_item(self, annotator: str, now: datetime, gold_due: bool) -> str | None:
        """The first item in serving order the annotator was never served and that has room.

        Each annotator walks the seeded order from their own starting point, so annotators
        spread over the queue instead of all reaching for the same item.
        """
        served = self.annotators.get(annotator, _AnnotatorState()).leases
        start = (self._key(annotator),)
        lists = [self.gold] if gold_due else []
        lists += [self.buckets[bucket] for bucket in sorted(self.buckets, reverse=True)]
        for entries in lists:
            first = bisect.bisect_left(entries, start)
            for k in range(len(entries)):
                item_id = entries[(first + k) % len(entries)][1]
                if item_id not in served and self.items[item_id].has_room(now):
                    return item_id
        return None


_QUEUES: dict[str, _Queue] = {}  # by store file
_QUEUE_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # by connection
_QUEUES_LOCK = threading.Lock()


def _queue(con: duckdb.DuckDBPyConnection) -> _Queue:
    """The queue state of the store ``con`` is connected to."""
    with _QUEUES_LOCK:
        queue = _QUEUE_OF.get(con)
        if queue is None:
            (path,) = con.execute(
                "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
            ).fetchone()
            # An in-memory store is its connection's own.
            queue = _QUEUES.setdefault(path, _Queue()) if path else _Queue()
            _QUEUE_OF[con] = queue
        return queue


def add_annotator(con: duckdb.DuckDBPyConnection, annotator: str) -> bool:
    """Register an annotator; returns False when already registered."""
    if not annotator.strip():
        raise EvalkitError("an annotator needs a non-empty name")
    queue = _queue(con)

    def decide() -> _Plan:
        if annotator in queue.known:
            return _Plan(False)
        row = [annotator, utc_now()]
        return _Plan(
            True,
            [lambda c: c.execute("INSERT INTO rating_annotators VALUES (?, ?)", row)],
            [lambda: queue.known.add(annotator)],
        )

    return queue.run(con, decide)


def _unknown_annotator(annotator: str) -> NoReturn:
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
    unique = {item.item_id: item for item in items}
    now = utc_now()
    queue = _queue(con)

    def decide() -> _Plan:
        new = sorted((item_id, it) for item_id, it in unique.items() if item_id not in queue.items)
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
            for item_id, it in new
        ]
        return _Plan(
            len(rows),
            [lambda c: insert_columns(c, "rating_items", rows, ITEM_TYPES, columns=ITEM_COLUMNS)]
            if rows
            else [],
            [lambda: [queue.add(i, it.kind, it.priority, it.overlap) for i, it in new]],
        )

    return queue.run(con, decide)


def _no_item(item_id: str) -> NoReturn:
    raise EvalkitError(
        f"no rating item {item_id!r} in the queue", hint="`evalkit rate status` lists the queue"
    )


def set_gold(
    con: duckdb.DuckDBPyConnection, item_id: str, answer: Rating, *, rubric: Rubric | None = None
) -> None:
    """Make an item a hidden gold item with a known ``answer`` (single and pair items)."""
    queue = _queue(con)
    gold = json.dumps({k: v for k, v in asdict(answer).items() if v not in (None, {})})

    def decide() -> _Plan:
        item = queue.items.get(item_id) or _no_item(item_id)
        if item.kind == "correction" or answer.skip_reason is not None:
            raise EvalkitError(
                f"item {item_id}: gold needs an answer that can be checked "
                "(a score, thumbs or choice)"
            )
        answer.check(item.kind, rubric or load_rubric())
        update = "UPDATE rating_items SET gold = ? WHERE item_id = ?"
        return _Plan(
            None,
            [lambda c: c.execute(update, [gold, item_id])],
            [] if item.gold else [lambda: queue.make_gold(item_id)],
        )

    queue.run(con, decide)


def _claim(
    queue: _Queue, annotator: str, config: QueueConfig, now: datetime, submitting: str | None
) -> _Plan:
    """Lease the next item to ``annotator``, or hand back their live lease (a refresh).

    ``submitting``: the item whose rating goes into the same transaction.
    """
    held = queue.held(annotator, now, but=submitting)
    if held is not None:
        return _Plan(held)
    if annotator not in queue.known:
        _unknown_annotator(annotator)
    state = queue.annotators.get(annotator, _AnnotatorState())
    # Gold is due when fewer than (n + 1) // gold_every of the annotator's n items were gold.
    every = config.gold_every
    gold_due = every > 0 and state.gold_served < (len(state.leases) + 1) // every
    if config.seed != queue.seed:
        queue.order(config.seed)
    item_id = queue.next_item(annotator, now, gold_due)
    if item_id is None:
        return _Plan(None)
    expires_at = now + timedelta(seconds=config.lease_ttl_s)
    lease = _Lease(uuid.uuid4().hex, item_id, queue.items[item_id].gold, now, expires_at)
    row = [lease.lease_id, item_id, annotator, lease.gold, now, expires_at]
    return _Plan(
        lease,
        [lambda c: c.execute(INSERT_LEASE, row)],
        [lambda: queue.lease(annotator, lease)],
    )


def _shown(con: duckdb.DuckDBPyConnection, lease: _Lease | None) -> Assignment | None:
    """The leased item as the app shows it."""
    if lease is None:
        return None
    kind, prompt, response_a, response_b = con.execute(SHOWN, [lease.item_id]).fetchone()
    return Assignment(
        lease.item_id, kind, json.loads(prompt), response_a, response_b, lease.expires_at
    )


def claim_next(
    con: duckdb.DuckDBPyConnection, annotator: str, config: QueueConfig | None = None
) -> Assignment | None:
    """Lease the next item to ``annotator``; None when nothing is left for them.

    Claiming again while the lease is live returns the same item (a page refresh).
    """
    config = config or QueueConfig()
    queue = _queue(con)
    return _shown(con, queue.run(con, lambda: _claim(queue, annotator, config, utc_now(), None)))


def standing(
    con: duckdb.DuckDBPyConnection, annotator: str, since: datetime, now: datetime | None = None
) -> tuple[int, int]:
    """The annotator's ratings and skips since ``since``, and the items the queue could still
    serve them: read from the queue's state (current with the store), not counted in SQL."""
    queue = _queue(con)
    now = now or utc_now()
    return queue.run(con, lambda: _Plan(queue.standing(annotator, since, now)))


@dataclass(frozen=True)
class _Submission:
    """A rating to store, and kept aside when refused."""

    annotator: str
    item_id: str
    rating: Rating
    rubric: Rubric
    shown_ms: int | None
    app_version: str
    rating_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def plan(self, queue: _Queue, con: duckdb.DuckDBPyConnection, now: datetime) -> _Plan:
        """Store the rating and close its lease; the plan's result is why it was refused, or
        None."""
        annotator, item_id, rating = self.annotator, self.item_id, self.rating
        item = queue.items.get(item_id) or _no_item(item_id)
        rating.check(item.kind, self.rubric)
        state = queue.annotators.get(annotator)
        lease = state.leases.get(item_id) if state else None
        counted = rating.skip_reason is None
        if lease is None:
            if annotator not in queue.known:
                _unknown_annotator(annotator)
            return _Plan(f"item {item_id} was never served to {annotator}: claim it first")
        if lease.closed_at is not None:
            return _Plan(
                f"{annotator} already rated or skipped item {item_id} at "
                f"{lease.closed_at:%Y-%m-%d %H:%M:%S} UTC: a rating is counted once"
            )
        if counted and lease.expires_at <= now and not item.has_room(now):
            return _Plan(
                f"the lease of {annotator} on item {item_id} expired at "
                f"{lease.expires_at:%Y-%m-%d %H:%M:%S} UTC and the item went to another annotator"
            )
        original = None
        if item.kind == "correction" and counted:
            original = con.execute(SHOWN, [item_id]).fetchone()[2]
        shown_ms = self.shown_ms
        if shown_ms is None:
            shown_ms = (now - lease.claimed_at) // timedelta(milliseconds=1)
        row = [
            self.rating_id,
            lease.lease_id,
            item_id,
            annotator,
            json.dumps(rating.scores) if rating.scores else None,
            rating.thumbs,
            rating.choice,
            original,
            rating.corrected,
            rating.skip_reason,
            shown_ms,
            self.rubric.version,
            self.app_version,
            lease.claimed_at,
            now,
        ]
        return _Plan(
            None,
            [lambda c: c.execute(INSERT_RATING, row)],
            [lambda: queue.close(annotator, item_id, now, counted)],
        )

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
        con.execute(f"INSERT INTO rating_refused VALUES ({', '.join('?' * 8)})", row)
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
    queue = _queue(con)
    refusal = queue.run(con, lambda: sub.plan(queue, con, utc_now()))
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
    config = config or QueueConfig()
    queue = _queue(con)

    def decide() -> _Plan:
        now = utc_now()
        rated = sub.plan(queue, con, now)
        if not rated.writes:
            return _Plan((rated.result, None))
        after = _claim(queue, annotator, config, now, submitting=item_id)
        return rated.then(after, (None, after.result))

    refusal, lease = queue.run(con, decide)
    if refusal is not None:
        sub.refuse(con, refusal)
    return sub.rating_id, _shown(con, lease)
