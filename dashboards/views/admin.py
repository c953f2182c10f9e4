"""Admin: accounts and roles, the audit log, and the annotators' agreement."""

import streamlit as st

from dashboards.session import guard, store
from evalkit.accounts import ROLES, audit_log, create_account, list_accounts, set_role
from evalkit.errors import EvalkitError
from evalkit.rating.report import agreement_report, annotator_report
from evalkit.rating.rubric import load_rubric

PAGE = "admin"
admin = guard(PAGE)
st.title("Admin")

with st.form("new_account", clear_on_submit=True):
    st.subheader("New account")
    name = st.text_input("Name")
    password = st.text_input("Password", type="password")
    role = st.selectbox("Role", ROLES)
    if st.form_submit_button("Create"):
        try:
            with store() as con:
                create_account(con, name, password, role, by=admin, page=PAGE)
            st.success(f"{name} ({role}) created")
        except EvalkitError as exc:
            st.error(str(exc))

try:
    with store() as con:
        accounts = list_accounts(con)
        with st.form("role"):
            st.subheader("Change a role")
            who = st.selectbox("Account", [a["name"] for a in accounts])
            new_role = st.selectbox("New role", ROLES)
            if st.form_submit_button("Change"):
                try:
                    set_role(con, admin, who, new_role, page=PAGE)
                    accounts = list_accounts(con)
                    st.success(f"{who} is now {new_role}")
                except EvalkitError as exc:
                    st.error(str(exc))
        st.subheader("Accounts")
        st.dataframe(accounts, hide_index=True)
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
        st.subheader("Agreement")
        agreement = agreement_report(con, load_rubric())
        st.code(
            "\n".join(f"{label:<24}{result}" for label, result in agreement) or "no ratings yet"
        )
        st.subheader("Audit log")
        st.dataframe(audit_log(con), hide_index=True)
except EvalkitError as exc:
    st.error(str(exc))
