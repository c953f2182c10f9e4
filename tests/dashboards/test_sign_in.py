"""Sign-in beyond the password: the session a reload resumes, signing out, and the team's
OpenID Connect provider (``st.login``) mapped to accounts by email."""

from datetime import timedelta

from streamlit.testing.v1 import AppTest

from evalkit.accounts import SESSION_HOURS_ENV, Account, link_email, resume_session
from evalkit.store import open_store

from .conftest import APP, page, rows, sign_in

AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "a secret only for the test",
    "google": {
        "client_id": "id",
        "client_secret": "secret",
        "server_metadata_url": "https://accounts.google.com/.well-known/openid-configuration",
    },
}


def test_signing_in_starts_a_session_and_signing_out_ends_it(workspace):
    at = sign_in("ann")
    session = at.session_state["session"]
    with open_store(workspace.store_path) as con:
        assert resume_session(con, session.token).account == Account("ann", "annotator")
    at.sidebar.button[0].click().run()
    assert at.title[0].value == "evalkit: sign in" and not at.exception
    assert rows(workspace, "SELECT ended_why FROM app_sessions") == [("signed out",)]
    assert "session" not in at.session_state


def test_the_provider_is_offered_only_when_streamlit_auth_is_configured(workspace):
    plain = AppTest.from_file(str(APP), default_timeout=30).run()
    assert [b.label for b in plain.button] == ["Sign in"]
    configured = AppTest.from_file(str(APP), default_timeout=30)
    configured.secrets["auth"] = AUTH
    assert [b.label for b in configured.run().button] == ["Sign in with Google", "Sign in"]


def _provider_signed_in(email: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.secrets["auth"] = AUTH
    at.user = {"is_logged_in": True, "email": email, "email_verified": True}
    return at.run()


def test_an_email_no_account_is_linked_to_gets_no_page(workspace):
    at = _provider_signed_in("eve@example.org")
    assert not at.exception and at.title[0].value == "evalkit: sign in"
    assert "no account is linked to the verified email eve@example.org" in at.warning[0].value
    assert "account" not in at.session_state
    assert rows(workspace, "SELECT who, action FROM app_audit WHERE action LIKE '%oidc%'") == [
        ("eve@example.org", "sign_in_oidc_refused")
    ]
    at.run()  # refused once per session, not on every rerun
    assert len(rows(workspace, "SELECT * FROM app_audit WHERE action LIKE '%oidc%'")) == 1
    at.button[0].click().run()  # "Sign out of the provider": st.logout
    assert at.user == {"is_logged_in": False} and not at.warning and not at.exception


def test_a_linked_email_signs_in_as_its_account(workspace):
    with open_store(workspace.store_path) as con:
        link_email(con, Account("ada", "admin"), "ann@example.org", "ann")
    at = _provider_signed_in("Ann@Example.org")
    assert not at.exception and at.title[0].value == "Rate"
    assert at.session_state["account"] == Account("ann", "annotator")


def test_an_admin_sets_a_password_and_links_an_email(workspace):
    at = page("admin", Account("ada", "admin"))
    at.selectbox(key="password_of").select("ann")
    at.text_input[2].input("a brand new passphrase")
    at.button[2].click().run()
    assert "ann has a new password" in at.success[0].value and not at.exception
    at.text_input[3].input("ann@example.org")
    at.selectbox(key="email_of").select("ann")
    at.button[3].click().run()
    assert "ann@example.org signs in as ann" in at.success[0].value
    assert at.dataframe[1].value.iloc[0]["email"] == "ann@example.org"
    assert sign_in("ann", "a brand new passphrase").title[0].value == "Rate"
    at.text_input[3].input("ann@example.org")
    at.button[4].click().run()
    assert "ann@example.org unlinked" in at.success[0].value
    assert rows(workspace, "SELECT action FROM app_audit WHERE who = 'ada' ORDER BY logged_at") == [
        ("set_password",),
        ("link_email",),
        ("unlink_email",),
    ]


def test_the_session_lasts_the_hours_the_app_was_started_with(workspace, monkeypatch):
    monkeypatch.setenv(SESSION_HOURS_ENV, "3")
    session = sign_in("ann").session_state["session"]
    (created,) = rows(workspace, "SELECT created_at FROM app_sessions")[0]
    assert session.expires_at - created == timedelta(hours=3)
