"""Sign in: name and password, checked by the library (argon2 hash, rate limit on failures),
or the team's OpenID Connect provider when Streamlit's ``[auth]`` secrets configure one."""

import os

import streamlit as st

from dashboards.session import SIGN_IN, keep, sign_out, store
from evalkit.accounts import (
    SESSION_HOURS_ENV,
    oidc_providers,
    session_lifetime,
    sign_in,
    start_session,
)
from evalkit.errors import EvalkitError

st.title("evalkit: sign in")
if refused := st.session_state.get("refused"):
    st.warning(refused)
if st.user.get("is_logged_in"):
    st.button("Sign out of the provider", on_click=sign_out)
auth = st.secrets.get("auth", {}) if st.secrets.load_if_toml_exists() else {}
for provider, label in oidc_providers(auth).items():
    if st.button(f"Sign in with {label}"):
        st.login(provider)
with st.form("sign_in"):
    name = st.text_input("Name")
    password = st.text_input("Password", type="password")
    submitted = st.form_submit_button("Sign in", type="primary")
if submitted:
    try:
        with store() as con:
            account = sign_in(con, name.strip(), password, page=SIGN_IN)
            lifetime = session_lifetime(os.environ.get(SESSION_HOURS_ENV))
            keep(start_session(con, account, lifetime=lifetime, page=SIGN_IN))
    except EvalkitError as exc:
        st.error(str(exc))
    else:
        st.session_state.pop("refused", None)
        st.rerun()
