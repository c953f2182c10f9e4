import hashlib
from datetime import timedelta

import pytest
from argon2 import PasswordHasher

from evalkit.accounts import (
    MAX_FAILURES,
    SESSION_LIFETIME,
    Account,
    NotAllowed,
    SignInError,
    audit_log,
    create_account,
    end_session,
    link_email,
    linked_emails,
    list_accounts,
    oidc_providers,
    require,
    resume_session,
    session_lifetime,
    set_password,
    set_role,
    sign_in,
    sign_in_oidc,
    start_session,
    unlink_email,
)
from evalkit.errors import EvalkitError
from evalkit.store import connect

PASSWORD = "correct horse battery"
ADA = Account("ada", "admin")


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    create_account(con, "ada", PASSWORD, "admin")
    yield con
    con.close()


def test_the_password_is_kept_as_an_argon2_hash_only(con):
    (stored,) = con.execute("SELECT password_hash FROM app_accounts WHERE name = 'ada'").fetchone()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert PasswordHasher().verify(stored, PASSWORD)  # the reference implementation agrees
    assert "password_hash" not in list_accounts(con)[0]


def test_sign_in_returns_the_account_with_its_role(con):
    assert sign_in(con, "ada", PASSWORD) == Account("ada", "admin")
    assert [(r["who"], r["action"]) for r in audit_log(con)][:1] == [("ada", "sign_in")]


@pytest.mark.parametrize(("name", "password"), [("ada", "wrong password!"), ("nobody", PASSWORD)])
def test_a_wrong_name_or_password_gets_the_same_message(con, name, password):
    with pytest.raises(SignInError, match="wrong name or password"):
        sign_in(con, name, password)
    assert audit_log(con)[0]["action"] == "sign_in_failed"


def test_repeated_failures_lock_the_name_until_the_window_passes(con):
    for _ in range(MAX_FAILURES):
        with pytest.raises(SignInError, match="wrong"):
            sign_in(con, "ada", "wrong password!")
    with pytest.raises(SignInError, match="too many failed sign-ins for 'ada'"):
        sign_in(con, "ada", PASSWORD)  # even the right password waits
    con.execute("UPDATE app_signin_failures SET failed_at = failed_at - INTERVAL 16 MINUTE")
    assert sign_in(con, "ada", PASSWORD).role == "admin"
    assert con.execute("SELECT count(*) FROM app_signin_failures").fetchone()[0] == 0


def test_a_success_clears_earlier_failures(con):
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(SignInError):
            sign_in(con, "ada", "wrong password!")
    sign_in(con, "ada", PASSWORD)
    with pytest.raises(SignInError, match="wrong"):
        sign_in(con, "ada", "wrong password!")  # counted from zero again, not locked


@pytest.mark.parametrize(
    ("name", "password", "role", "message"),
    [
        ("bob", "short", "annotator", "at least 10"),
        ("bob", PASSWORD, "anotator", "did you mean: annotator"),
        ("ada", PASSWORD, "engineer", "already exists"),
        (" bob", PASSWORD, "engineer", "surrounding spaces"),
    ],
)
def test_bad_accounts_are_refused(con, name, password, role, message):
    with pytest.raises(EvalkitError, match=message):
        create_account(con, name, password, role)


def test_only_admins_manage_accounts_and_it_is_audited(con):
    ada = Account("ada", "admin")
    bob = create_account(con, "bob", PASSWORD, "annotator", by=ada, page="admin")
    with pytest.raises(NotAllowed, match="bob \\(annotator\\) may not manage accounts"):
        create_account(con, "eve", PASSWORD, "admin", by=bob)
    with pytest.raises(NotAllowed):
        set_role(con, bob, "bob", "admin")
    set_role(con, ada, "bob", "engineer", page="admin")
    assert {a["name"]: a["role"] for a in list_accounts(con)} == {"ada": "admin", "bob": "engineer"}
    entry = audit_log(con)[0]
    assert (entry["who"], entry["action"], entry["page"]) == ("ada", "set_role", "admin")
    assert '"to": "engineer"' in entry["detail"]


def test_the_last_admin_stays_admin(con):
    with pytest.raises(EvalkitError, match="last admin"):
        set_role(con, Account("ada", "admin"), "ada", "annotator")


def test_accounts_that_rate_are_registered_with_the_queue(con):
    create_account(con, "bob", PASSWORD, "annotator")
    create_account(con, "eng", PASSWORD, "engineer")
    names = {n for (n,) in con.execute("SELECT annotator FROM rating_annotators").fetchall()}
    assert names == {"ada", "bob"}


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        ("annotator", "rate", True),
        ("engineer", "rate", False),
        ("ops", "enqueue", True),
        ("annotator", "enqueue", False),
        ("engineer", "retrain", True),
        ("ops", "retrain", False),
        ("admin", "manage_accounts", True),
    ],
)
def test_roles_decide_writes(role, action, allowed):
    who = Account("x", role)
    if allowed:
        assert require(who, action) is who
    else:
        with pytest.raises(NotAllowed):
            require(who, action)


def test_no_account_may_write():
    with pytest.raises(NotAllowed, match="sign in first"):
        require(None, "rate")


def test_a_session_token_signs_in_again_and_only_its_hash_is_kept(con):
    session = start_session(con, sign_in(con, "ada", PASSWORD), page="sign_in")
    assert len(session.token) >= 43 and session.account == ADA  # 32 random bytes
    (stored,) = con.execute("SELECT token_hash FROM app_sessions").fetchone()
    assert stored == hashlib.sha256(session.token.encode()).hexdigest() != session.token
    again = resume_session(con, session.token, page="sign_in")
    assert again == session
    entry = audit_log(con)[0]
    assert (entry["who"], entry["action"], entry["page"]) == ("ada", "sign_in_token", "sign_in")
    assert (
        session.expires_at - con.execute("SELECT created_at FROM app_sessions").fetchone()[0]
        == SESSION_LIFETIME
    )


def _tampered(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("spoil", "message", "audited"),
    [
        (lambda con, s: s.token + "x", "session is unknown", None),
        (lambda con, s: _tampered(s.token), "session is unknown", None),
        (lambda con, s: "", "session is unknown", None),
        (
            lambda con, s: (
                con.execute(
                    "UPDATE app_sessions SET expires_at = now()::TIMESTAMP - INTERVAL 1 SECOND"
                )
                and s.token
            ),
            "ended: expired",
            "expired",
        ),
        (lambda con, s: end_session(con, s) or s.token, "ended: signed out", "signed out"),
        (
            lambda con, s: set_role(con, ADA, "bob", "engineer") and s.token,
            "ended: role changed",
            "role changed",
        ),
        (
            lambda con, s: set_password(con, s.account, "bob", "another passphrase") or s.token,
            "ended: password changed",
            "password changed",
        ),
        (
            lambda con, s: con.execute("DELETE FROM app_accounts WHERE name = 'bob'") and s.token,
            "ended: the account is gone",
            "the account is gone",
        ),
    ],
    ids=["unknown", "tampered", "empty", "expired", "signed-out", "role", "password", "gone"],
)
def test_a_spoiled_token_is_refused(con, spoil, message, audited):
    session = start_session(con, create_account(con, "bob", PASSWORD, "annotator"))
    token = spoil(con, session)
    with pytest.raises(SignInError, match=message):
        resume_session(con, token)
    if audited:
        entry = audit_log(con)[0]
        assert (entry["who"], entry["action"]) == ("bob", "sign_in_token_refused")
        assert audited in entry["detail"]


def test_a_new_password_signs_in_and_only_an_admin_sets_another_s(con):
    bob = create_account(con, "bob", PASSWORD, "annotator")
    with pytest.raises(NotAllowed):
        set_password(con, bob, "ada", "a takeover attempt")
    set_password(con, bob, "bob", "another passphrase", page="rate")
    set_password(con, ADA, "bob", "a third passphrase", page="admin")
    assert sign_in(con, "bob", "a third passphrase") == bob
    with pytest.raises(SignInError):
        sign_in(con, "bob", "another passphrase")
    with pytest.raises(EvalkitError, match="at least 10"):
        set_password(con, bob, "bob", "short")
    with pytest.raises(EvalkitError, match="did you mean: bob"):
        set_password(con, ADA, "bobb", "a third passphrase")
    audited = [(e["who"], e["action"]) for e in audit_log(con) if e["action"] == "set_password"]
    assert audited == [("ada", "set_password"), ("bob", "set_password")]


@pytest.mark.parametrize(
    ("auth", "providers"),
    [
        ({}, {}),
        ({"client_id": "c", "server_metadata_url": "https://id.example.org/.well-known"}, {}),
        (
            {
                "redirect_uri": "http://localhost:8501/oauth2callback",
                "cookie_secret": "s",
                "client_id": "c",
                "server_metadata_url": "https://id.example.org/.well-known/openid-configuration",
            },
            {None: "id.example.org"},
        ),
        (
            {
                "redirect_uri": "u",
                "cookie_secret": "s",
                "google": {"client_id": "c"},
                "okta": {"client_id": "c"},
                "expose_tokens": ["id"],
            },
            {"google": "Google", "okta": "Okta"},
        ),
    ],
    ids=["none", "no-redirect", "default", "named"],
)
def test_providers_are_read_from_streamlits_auth_secrets(auth, providers):
    assert oidc_providers(auth) == providers


def test_a_linked_verified_email_signs_in_as_its_account(con):
    bob = create_account(con, "bob", PASSWORD, "annotator")
    link_email(con, ADA, " Bob@Example.org ", "bob", page="admin")
    assert linked_emails(con)[0] | {"linked_at": None} == {
        "email": "bob@example.org",
        "name": "bob",
        "role": "annotator",
        "linked_at": None,
        "linked_by": "ada",
    }
    claims = {"is_logged_in": True, "email": "BOB@example.org", "email_verified": True}
    assert sign_in_oidc(con, claims, page="sign_in") == bob
    entry = audit_log(con)[0]
    assert (entry["who"], entry["action"], entry["page"]) == ("bob", "sign_in_oidc", "sign_in")
    link_email(con, ADA, "bob@example.org", "ada")  # moved to another account
    assert sign_in_oidc(con, {"email": "bob@example.org"}) == ADA
    unlink_email(con, ADA, "bob@example.org", page="admin")
    with pytest.raises(SignInError, match="no account is linked"):
        sign_in_oidc(con, claims)
    assert [e["action"] for e in audit_log(con)[:3]] == [
        "sign_in_oidc_refused",
        "unlink_email",
        "sign_in_oidc",
    ]


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"email": "eve@example.org"}, "no account is linked to the verified email eve@"),
        ({"email": "ada@example.org", "email_verified": False}, "no account is linked"),
        ({"name": "Ada"}, "sent no email"),
        ({"email": "not-an-email"}, "give an address like"),
    ],
)
def test_an_unknown_or_unverified_email_is_refused(con, claims, message):
    link_email(con, ADA, "ada@example.org", "ada")
    with pytest.raises(EvalkitError, match=message):
        sign_in_oidc(con, claims)


def test_only_admins_link_emails_to_existing_accounts(con):
    bob = create_account(con, "bob", PASSWORD, "annotator")
    with pytest.raises(NotAllowed):
        link_email(con, bob, "bob@example.org", "bob")
    with pytest.raises(EvalkitError, match="did you mean: bob"):
        link_email(con, ADA, "bob@example.org", "bobb")
    with pytest.raises(EvalkitError, match="unknown linked email"):
        unlink_email(con, ADA, "nobody@example.org")


@pytest.mark.parametrize(
    ("hours", "lifetime"),
    [(None, SESSION_LIFETIME), ("1", timedelta(hours=1)), ("36", timedelta(hours=36))],
)
def test_the_session_lifetime_setting(hours, lifetime):
    assert session_lifetime(hours) == lifetime


@pytest.mark.parametrize("hours", ["0", "-1", "1.5", "twelve", ""])
def test_a_bad_session_lifetime_setting_names_the_variable(hours):
    with pytest.raises(EvalkitError, match="EVALKIT_SESSION_HOURS is"):
        session_lifetime(hours)
