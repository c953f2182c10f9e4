import pytest
from argon2 import PasswordHasher

from evalkit.accounts import (
    MAX_FAILURES,
    Account,
    NotAllowed,
    SignInError,
    audit_log,
    create_account,
    list_accounts,
    require,
    set_role,
    sign_in,
)
from evalkit.errors import EvalkitError
from evalkit.store import connect

PASSWORD = "correct horse battery"


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
