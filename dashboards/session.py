"""What every page shares: the workspace store, the signed-in account and the page guard.

A person stays signed in across reloads: by a session token the browser keeps in a cookie
(:func:`evalkit.accounts.start_session`), or by the team's OpenID Connect provider through
``st.login``, whose identity Streamlit keeps in its own cookie.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import streamlit as st

from evalkit.accounts import (
    Account,
    Session,
    SignInError,
    end_session,
    resume_session,
    sign_in_oidc,
)
from evalkit.errors import EvalkitError
from evalkit.store import SharedStore
from evalkit.workspace import Workspace, open_workspace

# A page waits this long for a store locked by another process, then says so and keeps what
# the person typed (a command line job holding the lock for minutes must not freeze the app).
LOCK_TIMEOUT_S = 2.0
COOKIE = "evalkit_session"  # the browser's session token
SIGN_IN = "sign_in"  # the page named in the audit log for every kind of sign-in


def workspace() -> Workspace:
    """The workspace the app was started on (``$EVALKIT_WORKSPACE``)."""
    if "workspace" not in st.session_state:
        st.session_state.workspace = open_workspace()
    return st.session_state.workspace


@st.cache_resource
def _shared(path: str) -> SharedStore:
    """One :class:`SharedStore` per store file for the whole server: every session's pages."""
    return SharedStore(path, LOCK_TIMEOUT_S)


@contextmanager
def store() -> Iterator[duckdb.DuckDBPyConnection]:
    """A short connection to the workspace's store; raises StoreBusy when it stays locked."""
    with _shared(str(workspace().store_path)).open() as con:
        yield con


def account() -> Account | None:
    return st.session_state.get("account")


def keep(session: Session) -> None:
    """Sign this Streamlit session in, and have the browser keep the token (:func:`cookie`)."""
    st.session_state.account = session.account
    st.session_state.session = session


def recognise() -> Account | None:
    """The signed-in account: this Streamlit session's, else the person the OpenID Connect
    provider signed in, else the session of the browser's cookie (checked once a session)."""
    try:
        if account() is None and st.user.get("is_logged_in"):
            if "refused" not in st.session_state:
                with store() as con:
                    st.session_state.account = sign_in_oidc(con, st.user.to_dict(), page=SIGN_IN)
        elif account() is None and "cookie_checked" not in st.session_state:
            # Read from a copy: AppTest's stand-in for the browser answers any one key asked.
            if token := dict(st.context.cookies).get(COOKIE):
                with store() as con:
                    keep(resume_session(con, token, page=SIGN_IN))
            st.session_state.cookie_checked = True
    except SignInError as exc:
        st.session_state.refused = str(exc)
        st.session_state.cookie_checked = True
        st.session_state.forget_cookie = not st.user.get("is_logged_in")
    except EvalkitError:
        pass  # the store is busy: the sign-in page shows, and the next run tries again
    return account()


def cookie() -> None:
    """Have the browser keep this session's token, or drop one that was refused or ended.

    Streamlit sets no cookie of its own for an app, so a tiny script does: SameSite=Strict,
    and Secure when the app is served over https.
    """
    session = st.session_state.get("session")
    if session is not None:
        value, expiry = session.token, session.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
    elif st.session_state.pop("forget_cookie", False):
        value, expiry = "", "Thu, 01 Jan 1970 00:00:00 GMT"
    else:
        return
    st.html(
        f"<script>document.cookie = '{COOKIE}={value}; Path=/; Expires={expiry}; "
        "SameSite=Strict' + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )


def guard(page: str) -> Account:
    """The signed-in account when its role sees ``page``; otherwise a message, and the page
    stops there."""
    who = account()
    if who is None:
        st.error("Sign in first.")
        st.stop()
    if not who.sees(page):
        st.error(f"{who.name} ({who.role}) may not open the {page} page: ask an admin for a role.")
        st.stop()
    return who


def sign_out() -> None:
    """End the session in the store (its token is refused from now on) and in the browser;
    sign out of the OpenID Connect provider too when it signed the person in."""
    if (session := st.session_state.get("session")) is not None:
        try:
            with store() as con:
                end_session(con, session)
        except EvalkitError as exc:
            st.toast(f"Not signed out: {exc}")
            return
    st.session_state.clear()
    st.session_state.cookie_checked = st.session_state.forget_cookie = True
    if st.user.get("is_logged_in"):
        st.logout()
