"""Accounts, roles and the audit log of the app, in the workspace store.

Passwords are kept only as argon2id hashes (``argon2-cffi``). A role decides which pages a
person sees (:data:`PAGES`) and what they may write (:data:`PERMISSIONS`); every write of the
app goes through a library function that calls :func:`require` first and :func:`audit` after,
so a page cannot write what its reader's role does not allow. Repeated failed sign-ins for one
name lock it for a while (:data:`MAX_FAILURES` in :data:`FAILURE_WINDOW`), whatever password
comes next.

    >>> create_account(con, "ada", "correct horse battery", "admin")  # doctest: +SKIP
    >>> sign_in(con, "ada", "correct horse battery")  # doctest: +SKIP
    Account(name='ada', role='admin')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import duckdb
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from evalkit import __version__
from evalkit.errors import EvalkitError, unknown_name
from evalkit.rating.queue import add_annotator, utc_now
from evalkit.store import transaction

ROLES = ("annotator", "engineer", "ops", "admin")
# What each role may write. Admins may do everything, so a small team needs one account.
PERMISSIONS = {
    "rate": ("annotator", "admin"),
    "enqueue": ("engineer", "ops", "admin"),
    "retrain": ("engineer", "admin"),
    "manage_accounts": ("admin",),
}
# Which pages each role sees: one page per job of a person.
PAGES = {
    "rate": ("annotator", "admin"),
    "releases": ("engineer", "admin"),
    "drift": ("ops", "engineer", "admin"),
    "retrain": ("engineer", "admin"),
    "admin": ("admin",),
}
MIN_PASSWORD = 10  # characters; long passphrases beat short complex ones
MAX_FAILURES = 5  # failed sign-ins for one name within FAILURE_WINDOW lock it
FAILURE_WINDOW = timedelta(minutes=15)
COMMAND_LINE = "(command line)"  # who wrote, for writes made by `evalkit app --create-admin`

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS app_accounts (
        name VARCHAR PRIMARY KEY,
        role VARCHAR NOT NULL,
        password_hash VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        created_by VARCHAR NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS app_signin_failures (
        name VARCHAR NOT NULL,
        failed_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS app_audit (
        logged_at TIMESTAMP NOT NULL,
        who VARCHAR NOT NULL,
        action VARCHAR NOT NULL,
        detail JSON,
        page VARCHAR,
        app_version VARCHAR NOT NULL
    )""",
)

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the name is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class SignInError(EvalkitError):
    """A wrong name or password, or a name locked after too many failures."""


class NotAllowed(EvalkitError):
    """The account's role does not allow the write or the page."""


@dataclass(frozen=True)
class Account:
    """A signed-in person: who writes, and what their role allows."""

    name: str
    role: str

    def may(self, action: str) -> bool:
        if action not in PERMISSIONS:
            raise unknown_name("action", action, PERMISSIONS)
        return self.role in PERMISSIONS[action]

    def sees(self, page: str) -> bool:
        if page not in PAGES:
            raise unknown_name("page", page, PAGES)
        return self.role in PAGES[page]


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for statement in SCHEMA:
        con.execute(statement)


def require(account: Account | None, action: str) -> Account:
    """``account`` when its role allows ``action``; raise :class:`NotAllowed` otherwise."""
    if account is None:
        raise NotAllowed(f"sign in first: {action} needs an account")
    if not account.may(action):
        raise NotAllowed(
            f"{account.name} ({account.role}) may not {action.replace('_', ' ')}",
            hint=f"it needs one of the roles: {', '.join(PERMISSIONS[action])}; ask an admin",
        )
    return account


def audit(
    con: duckdb.DuckDBPyConnection,
    who: Account | str | None,
    action: str,
    detail: dict | None = None,
    *,
    page: str | None = None,
) -> None:
    """Record one write: who (an account, a name, None for the command line), when, what,
    from which page and app version."""
    ensure_schema(con)
    if isinstance(who, Account):
        who = who.name
    con.execute(
        "INSERT INTO app_audit VALUES (?, ?, ?, ?, ?, ?)",
        [
            utc_now(),
            who or COMMAND_LINE,
            action,
            json.dumps(detail or {}, sort_keys=True, ensure_ascii=False),
            page,
            __version__,
        ],
    )


def audit_log(con: duckdb.DuckDBPyConnection, *, limit: int = 200) -> list[dict]:
    """The latest audited writes, newest first."""
    ensure_schema(con)
    cursor = con.execute("SELECT * FROM app_audit ORDER BY logged_at DESC LIMIT ?", [limit])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise EvalkitError(
            f"the password has {len(password)} characters: it needs at least {MIN_PASSWORD}",
            hint="use a passphrase of a few words",
        )


def create_account(
    con: duckdb.DuckDBPyConnection,
    name: str,
    password: str,
    role: str,
    *,
    by: Account | None = None,
    page: str | None = None,
) -> Account:
    """Add an account; ``by`` must be an admin (None: the command line, trusted as the file's
    owner). Accounts that may rate are registered as annotators of the rating queue."""
    if by is not None:
        require(by, "manage_accounts")
    if not name.strip() or name != name.strip():
        raise EvalkitError(f"account name {name!r}: give a name without surrounding spaces")
    if role not in ROLES:
        raise unknown_name("role", role, ROLES)
    _check_password(password)
    ensure_schema(con)
    account = Account(name, role)
    if account.may("rate"):
        add_annotator(con, name)
    with transaction(con):
        if con.execute("SELECT 1 FROM app_accounts WHERE name = ?", [name]).fetchone():
            raise EvalkitError(
                f"account {name!r} already exists", hint="choose another name or change its role"
            )
        con.execute(
            "INSERT INTO app_accounts VALUES (?, ?, ?, ?, ?)",
            [name, role, _HASHER.hash(password), utc_now(), by.name if by else COMMAND_LINE],
        )
        audit(con, by, "create_account", {"name": name, "role": role}, page=page)
    return account


def set_role(
    con: duckdb.DuckDBPyConnection, by: Account, name: str, role: str, *, page: str | None = None
) -> Account:
    """Change an account's role (admins only); an admin cannot demote the last admin."""
    require(by, "manage_accounts")
    if role not in ROLES:
        raise unknown_name("role", role, ROLES)
    ensure_schema(con)
    account = Account(name, role)
    if account.may("rate"):
        add_annotator(con, name)
    with transaction(con):
        row = con.execute("SELECT role FROM app_accounts WHERE name = ?", [name]).fetchone()
        if row is None:
            raise unknown_name("account", name, [a["name"] for a in list_accounts(con)])
        admins = con.execute("SELECT count(*) FROM app_accounts WHERE role = 'admin'").fetchone()
        if row[0] == "admin" and role != "admin" and admins[0] == 1:
            raise EvalkitError(f"{name} is the last admin", hint="make another account admin first")
        con.execute("UPDATE app_accounts SET role = ? WHERE name = ?", [role, name])
        audit(con, by, "set_role", {"name": name, "from": row[0], "to": role}, page=page)
    return account


def list_accounts(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every account's name, role and creation, by name (never the hashes)."""
    ensure_schema(con)
    cursor = con.execute(
        "SELECT name, role, created_at, created_by FROM app_accounts ORDER BY name"
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def sign_in(
    con: duckdb.DuckDBPyConnection, name: str, password: str, *, page: str | None = None
) -> Account:
    """The account for ``name`` when ``password`` is its password; :class:`SignInError` when
    not, or while the name is locked after :data:`MAX_FAILURES` recent failures."""
    ensure_schema(con)
    now = utc_now()
    failures = con.execute(
        "SELECT count(*), min(failed_at) FROM app_signin_failures WHERE name = ? AND failed_at > ?",
        [name, now - FAILURE_WINDOW],
    ).fetchone()
    if failures[0] >= MAX_FAILURES:
        wait = failures[1] + FAILURE_WINDOW - now
        raise SignInError(
            f"too many failed sign-ins for {name!r}: try again in {_minutes(wait)}",
            hint="or ask an admin",
        )
    row = con.execute(
        "SELECT role, password_hash FROM app_accounts WHERE name = ?", [name]
    ).fetchone()
    try:
        _HASHER.verify(row[1] if row else _DUMMY_HASH, password)
        ok = row is not None
    except (VerificationError, InvalidHashError):
        ok = False
    with transaction(con):
        if not ok:
            con.execute("INSERT INTO app_signin_failures VALUES (?, ?)", [name, now])
            audit(con, name, "sign_in_failed", page=page)
        else:
            con.execute("DELETE FROM app_signin_failures WHERE name = ?", [name])
            audit(con, Account(name, row[0]), "sign_in", page=page)
    if not ok:
        raise SignInError("wrong name or password", hint="check both and try again")
    return Account(name, row[0])


def _minutes(wait: timedelta) -> str:
    minutes = max(1, round(wait.total_seconds() / 60))
    return f"{minutes} minute{'s' if minutes > 1 else ''}"
