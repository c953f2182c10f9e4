"""Rating in the app: what the Rate page calls, so every decision stays testable here.

An annotator's work is: claim an item (the queue leases it, so a reload gets it back), build a
:class:`Draft` key by key (saved in the store, so a reload keeps it), and send it as a rating.
Sending checks the account's role and audits the write. A rating the store cannot take now (a
lock held by another process) waits in an :class:`Outbox` kept in the app's session and is sent
again before anything else, so nothing typed is lost. Keys that reach the page too fast to know
their order are refused by :class:`Presses`, never applied in a guessed order.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

import duckdb

from evalkit.accounts import Account, audit, require
from evalkit.errors import EvalkitError
from evalkit.rating.queue import (
    Assignment,
    Item,
    QueueConfig,
    add_items,
    claim_next,
    standing,
    submit_and_claim,
    utc_now,
)
from evalkit.rating.rubric import CHOICES, Rating, Rubric
from evalkit.store import StoreBusy

# Every action on the Rate page and its key: shown on the page, bound to its buttons.
KEYMAP = {
    "single": (("1 … 5", "score the next rubric dimension"), ("Backspace", "undo the last score")),
    "pair": (("A", "A is better"), ("B", "B is better"), ("T", "a tie"), ("X", "both are bad")),
    "correction": (("Ctrl+Enter", "apply the edit (then Tab to leave the editor)"),),
    "any": (("Enter", "submit"), ("S", "skip, then 1 … 3 for a reason"), ("Esc", "cancel a skip")),
}
PAIR_KEYS = dict(zip("ABTX", CHOICES))  # key -> choice
SKIP_REASONS = (
    "I cannot judge this topic",
    "the conversation is broken or unreadable",
    "it contains private data",
)

DRAFTS = """CREATE TABLE IF NOT EXISTS rating_drafts (
    annotator VARCHAR PRIMARY KEY,
    item_id VARCHAR NOT NULL,
    draft JSON NOT NULL,
    saved_at TIMESTAMP NOT NULL
)"""


@dataclass
class Draft:
    """A rating being built, key by key; :meth:`rating` turns it into what is sent."""

    item_id: str
    scores: dict[str, int] = field(default_factory=dict)
    choice: str | None = None
    corrected: str | None = None
    skipping: bool = False  # the annotator pressed S and is choosing a reason

    def score(self, rubric: Rubric, value: int) -> None:
        """Score the first dimension without a score (the last one again once all have one)."""
        left = [d for d in rubric.dimension_names if d not in self.scores]
        self.scores[left[0] if left else rubric.dimension_names[-1]] = value

    def undo(self) -> None:
        """Forget the last score given."""
        if self.scores:
            self.scores.pop(next(reversed(self.scores)))

    def next_dimension(self, rubric: Rubric) -> str | None:
        return next((d for d in rubric.dimension_names if d not in self.scores), None)

    def press(self, key: str, kind: str, rubric: Rubric) -> Rating | None:
        """Apply one key of :data:`KEYMAP` to the draft of a ``kind`` item; returns the rating
        to send when the key sends one (Enter, or a skip reason)."""
        if self.skipping:
            if key in ("1", "2", "3"):
                return Rating(skip_reason=SKIP_REASONS[int(key) - 1])
            if key != "Esc":
                raise EvalkitError(f"key {key}: choose a skip reason (1 … 3) or cancel (Esc)")
            self.skipping = False
        elif key == "S":
            self.skipping = True
        elif key == "Enter":
            return self.rating(kind, rubric)
        elif kind == "single" and key in ("1", "2", "3", "4", "5"):
            self.score(rubric, int(key))
        elif kind == "single" and key == "Backspace":
            self.undo()
        elif kind == "pair" and key in PAIR_KEYS:
            self.choice = PAIR_KEYS[key]
        else:
            raise EvalkitError(f"key {key} does nothing on a {kind} item")
        return None

    def rating(self, kind: str, rubric: Rubric) -> Rating:
        """The rating to send; an :class:`EvalkitError` says what is still missing."""
        if kind == "single":
            rating = Rating(scores=dict(self.scores))
        elif kind == "pair":
            rating = Rating(choice=self.choice)
        else:
            rating = Rating(corrected=self.corrected)
        rating.check(kind, rubric)
        return rating


def ensure_drafts(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DRAFTS)


def save_draft(con: duckdb.DuckDBPyConnection, annotator: str, draft: Draft) -> None:
    """Keep the annotator's draft in the store (one per annotator: they hold one lease)."""
    ensure_drafts(con)
    con.execute(
        "INSERT OR REPLACE INTO rating_drafts VALUES (?, ?, ?, ?)",
        [annotator, draft.item_id, json.dumps(asdict(draft)), utc_now()],
    )


def load_draft(con: duckdb.DuckDBPyConnection, annotator: str, item: Assignment) -> Draft:
    """The annotator's saved draft of ``item``, else a new one (a correction starts from the
    response)."""
    ensure_drafts(con)
    row = con.execute(
        "SELECT draft FROM rating_drafts WHERE annotator = ? AND item_id = ?",
        [annotator, item.item_id],
    ).fetchone()
    if row:
        return Draft(**json.loads(row[0]))
    return Draft(item.item_id, corrected=item.response_a if item.kind == "correction" else None)


def correction_diff(original: str, corrected: str) -> str:
    """The correction as a unified diff of the response, line by line ("" when unchanged)."""
    lines = difflib.unified_diff(
        original.splitlines(), corrected.splitlines(), "response", "correction", lineterm=""
    )
    return "\n".join(lines)


def claim(
    con: duckdb.DuckDBPyConnection, account: Account, config: QueueConfig | None = None
) -> Assignment | None:
    """The item the account is rating: its live lease, else the next one (None: queue empty)."""
    require(account, "rate")
    return claim_next(con, account.name, config)


def send(
    con: duckdb.DuckDBPyConnection,
    account: Account,
    item_id: str,
    rating: Rating,
    *,
    rubric: Rubric,
    shown_ms: int | None = None,
    config: QueueConfig | None = None,
    page: str | None = None,
) -> Assignment | None:
    """Store the account's rating (or correction, or skip) and claim the next item in one
    transaction; audit it and drop the draft. Returns the next item."""
    require(account, "rate")
    rating_id, following = submit_and_claim(
        con, account.name, item_id, rating, config, rubric=rubric, shown_ms=shown_ms
    )
    what = "skip" if rating.skip_reason else "correction" if rating.corrected else "rating"
    audit(con, account, what, {"item_id": item_id, "rating_id": rating_id}, page=page)
    ensure_drafts(con)
    con.execute("DELETE FROM rating_drafts WHERE annotator = ?", [account.name])
    return following


def enqueue(
    con: duckdb.DuckDBPyConnection,
    account: Account,
    items: list[Item],
    detail: dict,
    *,
    page: str | None = None,
) -> int:
    """Queue ``items`` for rating as ``account`` (the ``enqueue`` permission); the write is
    audited with ``detail`` (where the items came from) and how many were new."""
    require(account, "enqueue")
    batch = f"app-{utc_now():%Y%m%dT%H%M%S}-{account.name}"
    added = add_items(con, items, batch=batch)
    audit(con, account, "enqueue", {**detail, "items": len(items), "new": added}, page=page)
    return added


@dataclass(frozen=True)
class Kept:
    """A rating waiting to be sent."""

    item_id: str
    rating: Rating
    shown_ms: int | None


@dataclass
class Outbox:
    """Ratings the store could not take yet, in the order given; lives in the app's session."""

    kept: list[Kept] = field(default_factory=list)

    def put(self, item_id: str, rating: Rating, shown_ms: int | None = None) -> None:
        self.kept.append(Kept(item_id, rating, shown_ms))

    def flush(
        self, con: duckdb.DuckDBPyConnection, account: Account, *, rubric: Rubric, **options
    ) -> list[str]:
        """Send every kept rating, oldest first; returns why any was refused (refused ones are
        kept by the queue in ``rating_refused``). A busy store raises :class:`StoreBusy` and
        keeps what was not sent."""
        refusals = []
        while self.kept:
            kept = self.kept[0]
            try:
                send(con, account, kept.item_id, kept.rating, rubric=rubric,
                     shown_ms=kept.shown_ms, **options)  # fmt: skip
            except StoreBusy:
                raise
            except EvalkitError as exc:
                refusals.append(exc.message)
            self.kept.pop(0)
        return refusals


TOO_FAST = "keys came too fast to know their order ({keys}): press them again"
QUIET_S = 1.0  # a person reads a refusal for longer than this before pressing again


@dataclass
class Presses:
    """The keys that reached the Rate page since its desk last ran, so that keys whose order is
    unknown are refused instead of applied in a guessed order.

    Streamlit merges the keys pressed while the page is still answering into one rerun, and runs
    their buttons' callbacks in page order, not press order (4, 5, 3 would score 4, 3, 5). So
    when more than one key arrives in one run, :meth:`settle` puts the draft and the outbox back
    as they were before them and says so. The keys that follow until the refusal has been on
    screen for :data:`QUIET_S` were typed in the same burst, before it could be read: they are
    refused too. The draft is thus always the keys pressed, in order, up to the first refused.
    """

    keys: list[str] = field(default_factory=list)
    before: Draft | None = None  # the draft before the first of ``keys``
    kept: int = 0  # how many ratings the outbox held before them
    refusing: bool = False  # the last keys were refused
    quiet_at: float = 0.0  # keys are taken again from this time (``time.monotonic``)

    def note(self, key: str, draft: Draft, outbox: Outbox) -> None:
        """Note a key before it changes ``draft`` (or puts a rating in ``outbox``)."""
        if not self.keys:
            self.before = copy.deepcopy(draft)
            self.kept = len(outbox.kept)
        self.keys.append(key)

    def settle(self, draft: Draft, outbox: Outbox, now: float) -> tuple[Draft, str | None]:
        """The draft to keep once this run's keys are applied, and why they were refused (None:
        taken). Refusing drops the ratings they put in ``outbox``."""
        keys, self.keys = self.keys, []
        if not keys:
            return draft, None
        self.refusing = len(keys) > 1 or (self.refusing and now < self.quiet_at)
        if not self.refusing:
            return draft, None
        del outbox.kept[self.kept :]
        return self.before, TOO_FAST.format(keys=", ".join(keys))

    def drawn(self, now: float) -> None:
        """The desk is drawn: a refusal is on screen from ``now``."""
        if self.refusing:
            self.quiet_at = now + QUIET_S


@dataclass(frozen=True)
class Progress:
    """What the Rate page shows: ratings and skips sent today, items still left for them."""

    done_today: int
    left: int


def progress(
    con: duckdb.DuckDBPyConnection, annotator: str, now: datetime | None = None
) -> Progress:
    """Today's count (UTC days, as the store keeps time) and the items the queue could still
    serve this annotator."""
    now = now or utc_now()
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return Progress(*standing(con, annotator, start, now))
