"""The real app in headless Chromium (the system's, driven by Playwright): sign in, rate by
keyboard, correct, reload mid-item (still signed in), sign out; then the ratings and the
sessions are read back from DuckDB."""

import json
import os
import time

import pytest

from evalkit.rating.annotate import QUIET_S
from evalkit.store import open_store

from .conftest import PASSWORD, item, queue, start_app


@pytest.fixture
def server(workspace, tmp_path):
    """`evalkit app` on a free loopback port; yields its URL."""
    app, url = start_app(workspace, tmp_path)
    yield url
    app.stop()


def sign_in(page, url: str, name: str) -> None:
    """Sign in with the keyboard: type the name, Tab, the password, Enter."""
    page.goto(url)
    page.get_by_label("Name").wait_for()
    page.get_by_label("Name").focus()
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Rate").wait_for()


def done_today(page) -> str:
    return page.get_by_test_id("stMetricValue").first.inner_text()


def wait_until(check, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def scored(page) -> int:
    """How many rubric dimensions show a score (a ✓ beside an anchor)."""
    return page.get_by_test_id("stMarkdown").filter(has_text="✓").count()


def shown_scores(page) -> list[int]:
    """The scores shown, in rubric order (the anchor line marked ✓ of each scored dimension)."""
    marked = page.get_by_test_id("stMarkdown").filter(has_text="✓").all_inner_texts()
    return [int(next(x for x in m.splitlines() if "✓" in x).split("·")[0]) for m in marked]


def shown_question(page) -> str:
    return page.get_by_test_id("stChatMessage").first.inner_text()


def test_rating_in_the_browser(workspace, server, browser, tmp_path, capsys):
    queue(workspace, [item(n) for n in range(5)])
    correction = item(9, "correction")
    queue(workspace, [type(correction)(**{**correction.__dict__, "priority": 5})])
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    page.get_by_label("Name").wait_for()
    page.screenshot(path=shots / "sign_in.png")
    sign_in(page, server, "ann")

    # The correction comes first (priority 5): edit, apply, submit.
    editor = page.get_by_label("Correct the response")
    editor.fill("a corrected answer")
    editor.press("Control+Enter")
    page.get_by_text("+a corrected answer").wait_for()
    page.screenshot(path=shots / "rate_correction.png")
    page.get_by_role("button", name="Submit").click()
    wait_until(lambda: done_today(page) == "1", "the correction to be counted")
    # The count shows before the app's run ends; a key pressed before it ends can be dropped.
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()

    # Three items by keyboard alone.
    page.screenshot(path=shots / "rate_single.png")
    for n in range(3):
        question = shown_question(page)
        # Each key waits until its score shows, as a person watching the rubric does (a key
        # pressed while the desk is still answering the previous one can be dropped).
        for count, key in enumerate(("4", "5", "3"), 1):
            page.keyboard.press(key)
            wait_until(lambda count=count: scored(page) == count, f"score {count} to show")
        page.keyboard.press("Enter")
        wait_until(lambda n=n: done_today(page) == str(2 + n), f"rating {n + 1} to be counted")
        wait_until(lambda q=question: shown_question(page) != q, "the next item")

    # Three keys with no wait. Keys that reach the page in one run cannot be ordered: they are
    # refused with a message, never applied in a guessed order; what is taken is always the
    # keys pressed, in order, up to the first refused. Then the rest is pressed again.
    question = shown_question(page)
    keys = ("4", "5", "3")
    for key in keys:
        page.keyboard.press(key)
    too_fast = page.get_by_text("keys came too fast to know their order")
    wait_until(lambda: scored(page) == 3 or too_fast.count(), "the keys to be taken or refused")
    time.sleep(QUIET_S + 3)  # the keys still on their way land, and the refusal is read
    taken = shown_scores(page)
    assert taken == [4, 5, 3] or (too_fast.count() and taken == [4, 5, 3][: len(taken)]), taken
    for count, key in enumerate(keys[len(taken) :], len(taken) + 1):
        page.keyboard.press(key)
        wait_until(lambda count=count: scored(page) == count, f"score {count} to show again")
    assert shown_scores(page) == [4, 5, 3] and not too_fast.count()
    page.keyboard.press("Enter")
    wait_until(lambda: done_today(page) == "5", "the fast-typed rating to be counted")
    wait_until(lambda q=question: shown_question(page) != q, "the next item")
    with capsys.disabled():
        print(f"\nthree keys with no wait: {len(taken)} taken at once, the rest pressed again")

    # Midway through an item, reload: still signed in (the session cookie), the same item and
    # its draft come back.
    question = shown_question(page)
    page.keyboard.press("2")
    page.get_by_text("→ correctness").wait_for()
    (kept,) = [c for c in page.context.cookies() if c["name"] == "evalkit_session"]
    assert (kept["sameSite"], kept["secure"], kept["path"]) == ("Strict", False, "/")
    page.reload()
    page.get_by_text("→ correctness").wait_for()  # signed in, and the draft's first score kept
    assert shown_question(page) == question
    page.screenshot(path=shots / "rate_after_reload.png")
    # Signing out ends the session: a reload asks for the password again.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Name").wait_for()
    page.reload()
    page.get_by_label("Name").wait_for()
    assert not [c for c in page.context.cookies() if c["name"] == "evalkit_session"]

    # An admin sees every page: one screenshot each.
    admin = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(admin, server, "ada")
    last = {"Releases": "Two complete runs are needed", "Drift": "No drift results yet",
            "Admin": "Audit log"}  # fmt: skip
    for title, text in last.items():
        admin.get_by_role("link", name=title).click()
        admin.get_by_text(text).wait_for()  # the page is drawn to its end
        admin.screenshot(path=shots / f"{title.lower()}.png", full_page=True)
    with capsys.disabled():
        print(f"\nscreenshots of every page: {shots}")
    with open_store(workspace.store_path) as con:
        got = con.execute(
            "SELECT r.scores, r.corrected FROM ratings r ORDER BY r.submitted_at"
        ).fetchall()
        (draft,) = con.execute("SELECT draft FROM rating_drafts").fetchone()
        signed_in = con.execute(
            "SELECT action FROM app_audit WHERE who = 'ann' AND action LIKE 'sign%' "
            "ORDER BY logged_at"
        ).fetchall()
        ended = con.execute("SELECT ended_why FROM app_sessions WHERE name = 'ann'").fetchall()
    assert got[0] == (None, "a corrected answer")
    assert [json.loads(s) for s, _ in got[1:]] == [
        {"helpfulness": 4, "correctness": 5, "harmlessness": 3}
    ] * 4
    assert json.loads(draft)["scores"] == {"helpfulness": 2}
    assert signed_in == [("sign_in",), ("sign_in_token",), ("sign_out",)] and ended == [
        ("signed out",)
    ]
    assert os.listdir(shots)
