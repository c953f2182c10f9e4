"""Sign in: name and password, checked by the library (argon2 hash, rate limit on failures)."""

import streamlit as st

from dashboards.session import store
from evalkit.accounts import sign_in
from evalkit.errors import EvalkitError

st.title("evalkit: sign in")
with st.form("sign_in"):
    name = st.text_input("Name")
    password = st.text_input("Password", type="password")
    submitted = st.form_submit_button("Sign in", type="primary")
if submitted:
    try:
        with store() as con:
            st.session_state.account = sign_in(con, name.strip(), password, page="sign_in")
    except EvalkitError as exc:
        st.error(str(exc))
    else:
        st.rerun()
