import subprocess
import sys
import time

import pytest

from evalkit.accounts import Account, NotAllowed, audit_log
from evalkit.errors import EvalkitError
from evalkit.rating.annotate import (
    QUIET_S,
    SKIP_REASONS,
    Draft,
    Outbox,
    Presses,
    Progress,
    claim,
    correction_diff,
    load_draft,
    progress,
    save_draft,
    send,
)
from evalkit.rating.queue import Item, QueueConfig, add_annotator, add_items
from evalkit.rating.rubric import Rating, load_rubric
from evalkit.store import StoreBusy, connect, open_store

RUBRIC = load_rubric()
NO_GOLD = QueueConfig(gold_every=0)
ANN = Account("ann", "annotator")


def _item(n, kind="single"):
    pair = {"response_b": f"other {n}"} if kind == "pair" else {}
    return Item(kind, [{"role": "user", "content": f"q{n}"}], f"answer {n}", {"n": n}, **pair)


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    add_annotator(con, "ann")
    yield con
    con.close()


def test_digits_score_the_dimensions_in_rubric_order_and_enter_sends():
    draft = Draft("i")
    for key in ("4", "2", "Backspace", "5", "3"):
        assert draft.press(key, "single", RUBRIC) is None
    assert draft.scores == {"helpfulness": 4, "correctness": 5, "harmlessness": 3}
    assert draft.press("Enter", "single", RUBRIC) == Rating(scores=draft.scores)


def _run(presses, draft, outbox, keys, now):
    """One rerun of the page: each key's callback (in the order given), then the desk."""
    for key in keys:
        presses.note(key, draft, outbox)
        rating = draft.press(key, "single", RUBRIC)
        if rating is not None:
            outbox.put(draft.item_id, rating)
    draft, refusal = presses.settle(draft, outbox, now)
    presses.drawn(now)
    return draft, refusal


def test_keys_of_one_run_each_are_taken_in_order():
    presses, draft, outbox = Presses(), Draft("i"), Outbox()
    for n, key in enumerate(("4", "5", "3", "Enter")):
        draft, refusal = _run(presses, draft, outbox, [key], now=n * 0.01)
        assert refusal is None
    assert [k.rating for k in outbox.kept] == [
        Rating(scores={"helpfulness": 4, "correctness": 5, "harmlessness": 3})
    ]


def test_keys_merged_into_one_run_are_refused_and_the_draft_kept_as_before():
    presses, draft, outbox = Presses(), Draft("i"), Outbox()
    draft, _ = _run(presses, draft, outbox, ["4"], now=0)
    # 5 then 3 pressed at once: the page runs their callbacks in page order, 3 before 5.
    draft, refusal = _run(presses, draft, outbox, ["3", "5"], now=0.1)
    assert refusal == "keys came too fast to know their order (3, 5): press them again"
    assert draft.scores == {"helpfulness": 4}
    # A key of the same burst, before the refusal could be read, is refused too...
    draft, refusal = _run(presses, draft, outbox, ["2"], now=0.1 + QUIET_S / 2)
    assert refusal and draft.scores == {"helpfulness": 4}
    # ...and one pressed once it has been on screen a while is taken.
    later = 0.1 + QUIET_S / 2 + QUIET_S + 0.01
    draft, refusal = _run(presses, draft, outbox, ["5"], now=later)
    assert refusal is None and draft.scores == {"helpfulness": 4, "correctness": 5}


def test_a_rating_sent_by_merged_keys_is_taken_back():
    presses, draft, outbox = Presses(), Draft("i"), Outbox()
    for n, key in enumerate(("4", "5")):
        draft, _ = _run(presses, draft, outbox, [key], now=n)
    draft, refusal = _run(presses, draft, outbox, ["3", "Enter"], now=2)
    assert refusal and not outbox.kept
    assert draft.scores == {"helpfulness": 4, "correctness": 5} and not draft.skipping


def test_enter_on_an_unfinished_draft_says_what_is_missing():
    draft = Draft("i")
    draft.press("4", "single", RUBRIC)
    with pytest.raises(EvalkitError, match="scores missing for: correctness, harmlessness"):
        draft.press("Enter", "single", RUBRIC)


@pytest.mark.parametrize(
    ("key", "choice"), [("A", "A"), ("B", "B"), ("T", "tie"), ("X", "both_bad")]
)
def test_pair_keys_choose(key, choice):
    draft = Draft("i")
    draft.press(key, "pair", RUBRIC)
    assert draft.press("Enter", "pair", RUBRIC) == Rating(choice=choice)


def test_s_then_a_digit_skips_with_that_reason_and_esc_cancels():
    draft = Draft("i")
    draft.press("S", "single", RUBRIC)
    with pytest.raises(EvalkitError, match="choose a skip reason"):
        draft.press("5", "single", RUBRIC)
    draft.press("Esc", "single", RUBRIC)
    assert not draft.skipping
    draft.press("S", "pair", RUBRIC)
    assert draft.press("2", "pair", RUBRIC) == Rating(skip_reason=SKIP_REASONS[1])


@pytest.mark.parametrize(("key", "kind"), [("A", "single"), ("4", "pair"), ("4", "correction")])
def test_a_key_of_another_kind_is_refused(key, kind):
    with pytest.raises(EvalkitError, match=f"does nothing on a {kind} item"):
        Draft("i").press(key, kind, RUBRIC)


def test_an_empty_correction_is_refused():
    with pytest.raises(EvalkitError, match="corrected response is empty"):
        Draft("i", corrected="  ").press("Enter", "correction", RUBRIC)


def test_the_draft_survives_in_the_store_and_a_correction_starts_from_the_response(con):
    add_items(con, [_item(1, "correction")])
    item = claim(con, ANN, NO_GOLD)
    draft = load_draft(con, "ann", item)
    assert draft.corrected == "answer 1"
    draft.corrected = "a better answer"
    save_draft(con, "ann", draft)
    assert load_draft(con, "ann", claim(con, ANN, NO_GOLD)) == draft  # a reload


def test_correction_diff_shows_removed_and_added_lines():
    diff = correction_diff("one\ntwo", "one\nthree")
    assert "-two" in diff.splitlines() and "+three" in diff.splitlines()
    assert correction_diff("same", "same") == ""


def test_send_stores_audits_drops_the_draft_and_claims_the_next(con):
    add_items(con, [_item(1), _item(2)])
    item = claim(con, ANN, NO_GOLD)
    save_draft(con, "ann", Draft(item.item_id, scores={"helpfulness": 2}))
    following = send(
        con, ANN, item.item_id, Rating(thumbs="up"), rubric=RUBRIC, config=NO_GOLD, page="rate"
    )
    assert following is not None and following.item_id != item.item_id
    assert con.execute("SELECT annotator, thumbs FROM ratings").fetchall() == [("ann", "up")]
    assert con.execute("SELECT count(*) FROM rating_drafts").fetchone()[0] == 0
    entry = audit_log(con)[0]
    assert (entry["who"], entry["action"], entry["page"]) == ("ann", "rating", "rate")
    assert progress(con, "ann") == Progress(done_today=1, left=0)  # the other one is held


def test_left_counts_what_the_queue_could_still_serve(con):
    add_annotator(con, "bob")
    add_items(con, [_item(n) for n in range(4)])
    rated = claim(con, ANN, NO_GOLD)
    send(con, ANN, rated.item_id, Rating(thumbs="up"), rubric=RUBRIC, config=NO_GOLD)
    # one rated (full at overlap 1), one held by ann (no room for bob): two left for each
    assert progress(con, "bob").left == 2
    assert progress(con, "ann") == Progress(done_today=1, left=2)


def test_a_role_that_may_not_rate_writes_nothing(con):
    add_items(con, [_item(1)])
    item = claim(con, ANN, NO_GOLD)
    with pytest.raises(NotAllowed, match="eng \\(engineer\\) may not rate"):
        send(con, Account("eng", "engineer"), item.item_id, Rating(thumbs="up"), rubric=RUBRIC)
    with pytest.raises(NotAllowed):
        claim(con, Account("eng", "ops"), NO_GOLD)
    assert con.execute("SELECT count(*) FROM ratings").fetchone()[0] == 0


def test_the_outbox_sends_in_order_and_reports_refusals(con):
    add_items(con, [_item(1), _item(2)])
    item = claim(con, ANN, NO_GOLD)
    outbox = Outbox()
    outbox.put(item.item_id, Rating(thumbs="down"), 1200)
    outbox.put(item.item_id, Rating(thumbs="up"))  # the same item again: refused, kept aside
    refusals = outbox.flush(con, ANN, rubric=RUBRIC, config=NO_GOLD)
    assert not outbox.kept and len(refusals) == 1 and "counted once" in refusals[0]
    assert con.execute("SELECT thumbs, shown_ms FROM ratings").fetchall() == [("down", 1200)]
    assert con.execute("SELECT count(*) FROM rating_refused").fetchone()[0] == 1


def test_a_store_locked_by_another_process_is_busy(tmp_path):
    path = tmp_path / "store.duckdb"
    connect(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with (
            pytest.raises(StoreBusy, match="locked by another process"),
            open_store(path, timeout=0.3),
        ):
            pass
        assert time.monotonic() - start < 5
    finally:
        holder.kill()
        holder.wait()
