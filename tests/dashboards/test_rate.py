import json
import subprocess
import sys

from streamlit.testing.v1 import AppTest

from evalkit.accounts import Account
from evalkit.rating.annotate import SKIP_REASONS

from .conftest import APP, item, press, queue, rows, sign_in


def test_a_wrong_password_is_refused_on_the_page(workspace):
    at = sign_in("ann", "not the password")
    assert [e.value for e in at.error] == [
        "wrong name or password\n  hint: check both and try again"
    ]
    assert "account" not in at.session_state and at.title[0].value == "evalkit: sign in"


def test_an_annotator_rates_by_keys_and_the_rating_is_stored(workspace):
    queue(workspace, [item(1), item(2)])
    at = sign_in("ann")
    assert at.title[0].value == "Rate" and not at.exception
    assert [m.value for m in at.metric] == ["0", "1"]
    shown = at.session_state["draft"].item_id
    press(at, "4", "5", "3", "Enter")
    (scores, item_id, shown_ms) = rows(workspace, "SELECT scores, item_id, shown_ms FROM ratings")[
        0
    ]
    assert json.loads(scores) == {"helpfulness": 4, "correctness": 5, "harmlessness": 3}
    assert item_id == shown and shown_ms >= 0
    assert [m.value for m in at.metric] == ["1", "0"]  # the next item is on screen
    assert at.session_state["draft"].item_id != shown
    assert rows(workspace, "SELECT who, action, page FROM app_audit WHERE action = 'rating'") == [
        ("ann", "rating", "rate")
    ]


def test_keys_merged_into_one_run_are_refused_and_the_draft_kept(workspace):
    queue(workspace, [item(1)])
    at = press(sign_in("ann"), "4")
    # Two keys reach the page in one run, as fast typing makes Streamlit merge them.
    at.button(key="key-5").click()
    at.button(key="key-3").click()
    at.run()
    assert [e.value for e in at.error] == [
        "keys came too fast to know their order (3, 5): press them again"
    ]
    assert at.session_state["draft"].scores == {"helpfulness": 4}
    assert rows(workspace, "SELECT json_extract(draft, '$.scores') FROM rating_drafts") == [
        ('{"helpfulness":4}',)
    ]
    assert sum("✓" in m.value for m in at.markdown) == 1


def test_the_pair_is_shown_in_the_recorded_order_and_the_choice_stored(workspace):
    queue(workspace, [item(1, "pair")])
    at = press(sign_in("ann"), "B")
    texts = [e.value for e in at.info]
    assert texts == ["first answer 1", "second answer 1"]  # A then B, as the queue recorded
    assert any("Response B ✓" in m.value for m in at.markdown)
    press(at, "Enter")
    assert rows(workspace, "SELECT choice FROM ratings") == [("B",)]


def test_a_correction_shows_its_diff_and_is_stored(workspace):
    queue(workspace, [item(1, "correction")])
    at = sign_in("ann")
    assert at.text_area[0].value == "first answer 1"
    at.text_area[0].input("a corrected answer").run()
    assert "+a corrected answer" in at.code[0].value and "-first answer 1" in at.code[0].value
    press(at, "Enter")
    assert rows(workspace, "SELECT original, corrected FROM ratings") == [
        ("first answer 1", "a corrected answer")
    ]
    assert rows(workspace, "SELECT action FROM app_audit WHERE who = 'ann' AND page = 'rate'") == [
        ("correction",)
    ]


def test_an_empty_correction_is_refused_and_nothing_is_stored(workspace):
    queue(workspace, [item(1, "correction")])
    at = sign_in("ann")
    at.text_area[0].input("").run()
    press(at, "Enter")
    assert "the corrected response is empty" in at.error[0].value
    assert rows(workspace, "SELECT count(*) FROM ratings") == [(0,)]


def test_a_skip_takes_a_reason(workspace):
    queue(workspace, [item(1)])
    at = press(sign_in("ann"), "S")
    assert [b.label for b in at.button if (b.key or "").startswith("key-")][:3] == [
        f"{n} · {reason}" for n, reason in enumerate(SKIP_REASONS, 1)
    ]
    press(at, "1")
    assert rows(workspace, "SELECT skip_reason FROM ratings") == [(SKIP_REASONS[0],)]


def test_an_empty_queue_says_so(workspace):
    at = sign_in("ann")
    assert "Nothing left to rate" in at.info[0].value and not at.exception


def test_a_reload_gets_the_same_item_and_the_draft_back(workspace):
    queue(workspace, [item(n) for n in range(3)])
    first = press(sign_in("ann"), "2", "4")
    held = first.session_state["draft"].item_id
    again = sign_in("ann")  # a new session: the page was reloaded
    draft = again.session_state["draft"]
    assert draft.item_id == held and draft.scores == {"helpfulness": 2, "correctness": 4}
    press(again, "5", "Enter")
    assert rows(workspace, "SELECT item_id FROM ratings") == [(held,)]


def test_a_role_that_may_not_rate_is_stopped_by_the_page(workspace):
    at = AppTest.from_file(str(APP.with_name("views") / "rate.py"), default_timeout=30)
    at.session_state["account"] = Account("eng", "engineer")
    at.run()
    assert "eng (engineer) may not open the rate page" in at.error[0].value
    assert not at.button


def test_a_rating_the_busy_store_cannot_take_is_kept_and_sent_later(workspace):
    queue(workspace, [item(1), item(2)])
    at = press(sign_in("ann"), "3", "3", "3")
    held = at.session_state["draft"].item_id
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(workspace.store_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        press(at, "Enter")
        assert "The store is busy" in at.warning[0].value and "1 rating(s)" in at.warning[0].value
    finally:
        holder.kill()
        holder.wait()
    at.button(key="retry").click().run()
    assert not at.warning
    assert rows(workspace, "SELECT item_id, scores FROM ratings") == [
        (held, json.dumps({"helpfulness": 3, "correctness": 3, "harmlessness": 3}))
    ]
