"""Sign-in through a real OpenID Connect provider: the app started from a folder whose
`.streamlit/secrets.toml` has an ``[auth]`` section pointing at a local provider
(``oidc-provider-mock``, loopback only), headless Chromium clicking the app's sign-in button and
filling the provider's authorization form; then the audit log is read back from DuckDB."""

import json

import pytest

from evalkit.accounts import Account, link_email
from evalkit.store import open_store
from monitor.stack import free_port

from .conftest import rows, start_app

oidc_provider_mock = pytest.importorskip("oidc_provider_mock")

# Subjects of the provider whose `sub` is not their email: the app must go by the email claim.
ANN = oidc_provider_mock.User(sub="ann-at-the-provider", claims={"email": "Ann@Example.org"})
EVE = oidc_provider_mock.User(sub="eve-at-the-provider", claims={"email": "eve@example.org"})


@pytest.fixture
def provider():
    """The provider on a loopback port the kernel picks (any client id and secret); its URL."""
    with oidc_provider_mock.run_server_in_thread(user_claims=[ANN, EVE]) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def server(workspace, provider, tmp_path):
    """`evalkit app` started from a folder whose `.streamlit/secrets.toml` signs people in
    through ``provider``; its URL."""
    port = free_port()
    auth = {
        "redirect_uri": f"http://127.0.0.1:{port}/oauth2callback",
        "cookie_secret": "a cookie secret only for the test",
        "client_id": "evalkit-test",
        "client_secret": "a client secret only for the test",
        "server_metadata_url": f"{provider}/.well-known/openid-configuration",
    }
    folder = tmp_path / "started_from"
    (folder / ".streamlit").mkdir(parents=True)
    lines = [f"{key} = {json.dumps(value)}" for key, value in auth.items()]
    (folder / ".streamlit" / "secrets.toml").write_text("\n".join(["[auth]", *lines, ""]))
    app, url = start_app(workspace, tmp_path, port=port, cwd=folder)
    yield url
    app.stop()


def provider_signs_in(browser, url: str, sub: str):
    """A new browser at the app: the sign-in button, then the provider's form as ``sub``."""
    page = browser.new_page()
    page.goto(url)
    page.get_by_role("button", name="Sign in with 127.0.0.1").click()
    page.get_by_role("heading", name="Authorize Client").wait_for()
    page.get_by_placeholder("sub").fill(sub)
    page.get_by_role("button", name="Authorize", exact=True).click()
    return page


def test_a_linked_email_signs_in_and_another_is_refused(workspace, server, browser):
    with open_store(workspace.store_path) as con:
        link_email(con, Account("ada", "admin"), "ann@example.org", "ann")

    ann = provider_signs_in(browser, server, ANN.sub)
    ann.get_by_role("heading", name="Rate").wait_for()
    ann.get_by_text("Signed in as ann (annotator)").wait_for()
    ann.reload()  # Streamlit's cookie keeps the provider's sign-in
    ann.get_by_text("Signed in as ann (annotator)").wait_for()
    # Signing out signs out of the provider too (its end-session page), then back to the app.
    ann.get_by_role("button", name="Sign out").click()
    ann.get_by_role("button", name="End session").click()
    ann.get_by_role("button", name="Sign in with 127.0.0.1").wait_for()
    assert not [c for c in ann.context.cookies() if c["name"].startswith("_streamlit_user")]

    eve = provider_signs_in(browser, server, EVE.sub)
    eve.get_by_text("no account is linked to the verified email eve@example.org").wait_for()
    assert eve.get_by_role("heading", name="evalkit: sign in").is_visible()
    eve.get_by_role("button", name="Sign out of the provider").click()
    eve.get_by_role("button", name="End session").click()
    eve.get_by_role("button", name="Sign in with 127.0.0.1").wait_for()
    assert not eve.get_by_text("no account is linked").count()

    # One sign-in per browser session: the first and the reload; the refusal once.
    audited = "SELECT who, action, detail, page FROM app_audit WHERE action LIKE 'sign_in_oidc%'"
    ann_signed_in = ("ann", "sign_in_oidc", '{"email": "ann@example.org"}', "sign_in")
    assert rows(workspace, audited + " ORDER BY logged_at") == [
        ann_signed_in,
        ann_signed_in,
        ("eve@example.org", "sign_in_oidc_refused", "{}", "sign_in"),
    ]
