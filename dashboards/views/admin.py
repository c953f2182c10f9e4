"""Admin: accounts, roles, passwords and the emails that sign in by the team's provider; the
annotators' agreement and the A/B campaigns' ranking; the audit log."""

from dataclasses import asdict

import duckdb
import streamlit as st

from dashboards.charts import interval_chart
from dashboards.session import guard, store, workspace
from evalkit.accounts import (
    ROLES,
    audit_log,
    create_account,
    link_email,
    linked_emails,
    list_accounts,
    set_password,
    set_role,
    unlink_email,
)
from evalkit.errors import EvalkitError
from evalkit.rating.report import (
    HeadToHead,
    agreement_report,
    annotator_report,
    ranking_report,
    ratings_version,
)
from evalkit.rating.rubric import load_rubric
from evalkit.stats.ranking import Ranking

PAGE = "admin"


# The bootstraps take seconds: computed again only when a rating was added (``version``).
@st.cache_data(max_entries=8, show_spinner="Resampling the ratings...")
def cached_agreement(_con: duckdb.DuckDBPyConnection, store: str, version: tuple) -> list:
    return agreement_report(_con, load_rubric())


@st.cache_data(max_entries=8, show_spinner="Resampling the ratings...")
def cached_ranking(_con: duckdb.DuckDBPyConnection, store: str, version: tuple) -> tuple:
    return ranking_report(_con)


def attempt(write, done: str) -> None:
    """Make one write; say it is done, or why it was refused."""
    try:
        write()
    except EvalkitError as exc:
        st.error(str(exc))
    else:
        st.success(done)


def ranking_view(ranking: Ranking, head_to_head: list[HeadToHead]) -> None:
    """Bradley-Terry strengths with their intervals, then each candidate against its baseline
    with the judgements still needed."""
    st.caption(
        f"Bradley-Terry log-strengths over {ranking.comparisons} judgements on "
        f"{ranking.prompts} prompts (ties count half; 95% intervals from {ranking.n_resamples} "
        f"resamples of prompts, seed {ranking.seed}, prior {ranking.prior})"
    )
    rows = [asdict(s) for s in ranking.strengths]
    st.dataframe(rows, hide_index=True)
    st.altair_chart(interval_chart(rows, "model", x="theta", title="log-strength"))
    if not head_to_head:
        return
    st.dataframe(
        [
            {
                "candidate": h.candidate,
                "baseline": h.baseline,
                "win rate": h.win_rate.value,
                "low": h.win_rate.low,
                "high": h.win_rate.high,
                "judged": h.plan.have,
                f"still needed at {h.plan.power:.0%} power": h.plan.more,
            }
            for h in head_to_head
        ],
        hide_index=True,
    )
    st.caption(
        f"Still needed: judgements to tell the win rate from {head_to_head[0].plan.threshold} "
        "(inf: the win rate is at the bar, no number of judgements decides it)."
    )


admin = guard(PAGE)
st.title("Admin")

try:
    with store() as con:
        with st.form("new_account", clear_on_submit=True):
            st.subheader("New account")
            name = st.text_input("Name")
            password = st.text_input("Password", type="password")
            role = st.selectbox("Role", ROLES)
            if st.form_submit_button("Create"):
                attempt(
                    lambda: create_account(con, name, password, role, by=admin, page=PAGE),
                    f"{name} ({role}) created",
                )
        names = [a["name"] for a in list_accounts(con)]
        with st.form("role"):
            st.subheader("Change a role")
            who = st.selectbox("Account", names)
            new_role = st.selectbox("New role", ROLES)
            if st.form_submit_button("Change"):
                attempt(
                    lambda: set_role(con, admin, who, new_role, page=PAGE),
                    f"{who} is now {new_role}",
                )
        with st.form("password", clear_on_submit=True):
            st.subheader("Set a password")
            whose = st.selectbox("Account", names, key="password_of")
            new_password = st.text_input("New password", type="password")
            if st.form_submit_button("Set"):
                attempt(
                    lambda: set_password(con, admin, whose, new_password, page=PAGE),
                    f"{whose} has a new password; their sessions are ended",
                )
        with st.form("email", clear_on_submit=True):
            st.subheader("Sign-in by email")
            st.caption(
                "Whoever the team's OpenID Connect provider signs in with this email "
                "is this account."
            )
            email = st.text_input("Email")
            linked_to = st.selectbox("Account", names, key="email_of")
            link, unlink = st.columns(2)
            if link.form_submit_button("Link"):
                attempt(
                    lambda: link_email(con, admin, email, linked_to, page=PAGE),
                    f"{email} signs in as {linked_to}",
                )
            if unlink.form_submit_button("Unlink"):
                attempt(lambda: unlink_email(con, admin, email, page=PAGE), f"{email} unlinked")
        st.subheader("Accounts")
        st.dataframe(list_accounts(con), hide_index=True)
        if emails := linked_emails(con):
            st.dataframe(emails, hide_index=True)
        st.subheader("Annotators")
        st.dataframe(
            [
                {
                    "annotator": s.annotator,
                    "ratings": s.ratings,
                    "skips": s.skips,
                    "gold accuracy": s.gold_accuracy,
                    "gold interval": f"[{s.gold_low:.2f}, {s.gold_high:.2f}]"
                    if s.gold_checked
                    else "",
                    "median s per item": s.median_shown_s,
                    "per hour": s.per_hour,
                }
                for s in annotator_report(con)
            ],
            hide_index=True,
        )
        version = ratings_version(con)
        st.subheader("Agreement")
        agreement = cached_agreement(con, str(workspace().store_path), version)
        st.code(
            "\n".join(f"{label:<24}{result}" for label, result in agreement) or "no ratings yet"
        )
        st.subheader("A/B campaigns")
        try:
            ranking, head_to_head = cached_ranking(con, str(workspace().store_path), version)
        except EvalkitError as exc:
            st.info(str(exc))
        else:
            ranking_view(ranking, head_to_head)
        st.subheader("Audit log")
        st.dataframe(audit_log(con), hide_index=True)
except EvalkitError as exc:
    st.error(str(exc))
