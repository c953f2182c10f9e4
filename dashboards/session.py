"""What every page shares: the workspace store, the signed-in account and the page guard."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import streamlit as st

from evalkit.accounts import Account
from evalkit.store import open_store
from evalkit.workspace import Workspace, open_workspace

# A page waits this long for a store locked by another process, then says so and keeps what
# the person typed (a command line job holding the lock for minutes must not freeze the app).
LOCK_TIMEOUT_S = 2.0


def workspace() -> Workspace:
    """The workspace the app was started on (``$EVALKIT_WORKSPACE``)."""
    if "workspace" not in st.session_state:
        st.session_state.workspace = open_workspace()
    return st.session_state.workspace


@contextmanager
def store() -> Iterator[duckdb.DuckDBPyConnection]:
    """A short connection to the workspace's store; raises StoreBusy when it stays locked."""
    with open_store(workspace().store_path, timeout=LOCK_TIMEOUT_S) as con:
        yield con


def account() -> Account | None:
    return st.session_state.get("account")


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
    st.session_state.clear()
