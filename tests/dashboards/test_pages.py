"""The Releases, Drift and Admin pages, each driven on its own with a signed-in account."""

from datetime import UTC, datetime, timedelta

import pytest

from evalkit.accounts import Account
from evalkit.gate.report import REPORTS_SCHEMA
from evalkit.rating import report
from evalkit.rating.queue import Item, add_items, claim_next, submit
from evalkit.rating.report import ranking_report
from evalkit.rating.rubric import Rating
from evalkit.results import create_run, finish_run
from evalkit.stats.ranking import bradley_terry
from evalkit.store import open_store

from .conftest import PASSWORD, page, rows, sign_in


@pytest.mark.parametrize(
    ("name", "role"), [("releases", "annotator"), ("drift", "annotator"), ("admin", "engineer")]
)
def test_a_page_the_role_may_not_see_says_so(workspace, name, role):
    at = page(name, Account("x", role))
    assert f"may not open the {name} page" in at.error[0].value and not at.exception


def test_each_role_is_offered_its_pages_only(workspace):
    assert sign_in("ann").title[0].value == "Rate"
    assert sign_in("eng").title[0].value == "Releases"  # the first page an engineer sees
    assert sign_in("ops").title[0].value == "Drift"


def test_releases_lists_runs_and_reports_newest_first_with_badges(workspace, tmp_path):
    folder = tmp_path / "gate-report"
    folder.mkdir()
    (folder / "report.md").write_text("# gate\n")
    with open_store(workspace.store_path) as con:
        old = create_run(con, name="baseline", suite_name="s")
        finish_run(con, old, summary={})
        new = create_run(con, name="candidate", suite_name="s")
        finish_run(con, new, summary={}, status="failed")
        con.execute(REPORTS_SCHEMA)
        now = datetime.now(UTC).replace(tzinfo=None)
        for n, verdict in enumerate(("PASS", "FAIL")):
            con.execute(
                "INSERT INTO gate_reports VALUES (?, ?, ?, '{}', ?, ?, ?, '{}')",
                [f"r{n}", old, new, verdict, now + timedelta(minutes=n), str(folder)],
            )
    at = page("releases", Account("eng", "engineer"))
    assert not at.exception
    shown = at.dataframe[0].value
    assert list(shown["run_id"]) == [new, old]
    assert list(shown["status"]) == ["❌ failed", "✅ complete"]
    assert [e.label.split(" · ")[0] for e in at.expander] == ["❌ FAIL", "✅ PASS"]
    assert [b.label for b in at.get("download_button")] == ["report.md", "report.md"]
    assert "Two complete runs are needed" in at.info[0].value


def test_an_empty_store_tells_which_commands_fill_each_page(workspace):
    releases = page("releases", Account("eng", "engineer"))
    assert "run `evalkit eval` first" in releases.info[0].value
    drift = page("drift", Account("ops", "ops"))
    assert drift.info[-1].value == "No drift results yet: run `evalkit monitor drift`."


def test_an_admin_creates_an_account_and_changes_a_role(workspace):
    at = page("admin", Account("ada", "admin"))
    at.text_input[0].input("zoe")
    at.text_input[1].input(PASSWORD)
    at.selectbox[0].select("annotator")
    at.button[0].click().run()
    assert "zoe (annotator) created" in at.success[0].value
    at.selectbox[1].select("zoe")
    at.selectbox[2].select("ops")
    at.button[1].click().run()
    assert not at.exception and "zoe is now ops" in at.success[0].value
    assert ("zoe", "ops") in rows(workspace, "SELECT name, role FROM app_accounts")
    assert rows(workspace, "SELECT who, action, page FROM app_audit WHERE who = 'ada'") == [
        ("ada", "create_account", "admin"),
        ("ada", "set_role", "admin"),
    ]


def test_a_bad_account_is_refused_on_the_page(workspace):
    at = page("admin", Account("ada", "admin"))
    at.text_input[0].input("zoe")
    at.text_input[1].input("short")
    at.button[0].click().run()
    assert "at least 10" in at.error[0].value and not at.exception


def _pairwise_campaign(ws, choices: str) -> None:
    """Pairs of a baseline and a candidate run, judged by ann in turn (A, B or T per pair)."""
    pairs = [
        Item(
            "pair",
            [{"role": "user", "content": f"question {n}"}],
            f"answer {n} of {first}",
            {"baseline": "base", "candidate": "cand", "n": n},
            response_b=f"answer {n} of {second}",
            source_a=first,
            source_b=second,
        )
        for n, (first, second) in enumerate([("base", "cand"), ("cand", "base")] * 10)
    ]
    with open_store(ws.store_path) as con:
        add_items(con, pairs)
        for choice in choices:
            shown = claim_next(con, "ann")
            submit(con, "ann", shown.item_id, Rating(choice={"T": "tie"}.get(choice, choice)))


def test_admin_draws_the_ranking_and_the_judgements_still_needed(workspace, monkeypatch):
    _pairwise_campaign(workspace, "ABAABTAABAB")
    fits = []
    monkeypatch.setattr(
        report, "bradley_terry", lambda *a, **k: fits.append(1) or bradley_terry(*a, **k)
    )
    at = page("admin", Account("ada", "admin"))
    assert not at.exception
    with open_store(workspace.store_path) as con:
        ranking, (head_to_head,) = ranking_report(con)
    strengths = at.dataframe[2].value
    assert list(strengths["model"]) == [s.model for s in ranking.strengths]
    for column in ("theta", "low", "high", "wins", "comparisons"):
        assert list(strengths[column]) == [getattr(s, column) for s in ranking.strengths]
    shown = at.dataframe[3].value.iloc[0]
    assert (shown["candidate"], shown["baseline"]) == ("cand", "base")
    assert shown["win rate"] == head_to_head.win_rate.value
    assert shown["still needed at 80% power"] == head_to_head.plan.more > 0
    assert len(at.get("vega_lite_chart")) == 1 and len(fits) == 2  # the test's fit too

    at.run()  # no new rating: nothing resampled again
    assert len(fits) == 2 and at.dataframe[2].value.equals(strengths)
    _pairwise_campaign(workspace, "B")
    at.run()
    assert len(fits) == 3 and at.dataframe[3].value.iloc[0]["judged"] == head_to_head.plan.have + 1


def test_admin_says_when_there_is_no_ab_campaign(workspace):
    at = page("admin", Account("ada", "admin"))
    assert "no pairwise judgements in the store yet" in at.info[0].value and not at.exception
