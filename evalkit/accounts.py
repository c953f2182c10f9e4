"""Accounts, roles and the audit log of the app, in the workspace store.

Passwords are kept only as argon2id hashes (``argon2-cffi``). A role decides which pages a
person sees (:data:`PAGES`) and what they may write (:data:`PERMISSIONS`); every write of the
app goes through a library function that calls :func:`require` first and :func:`audit` after,
so a page cannot write what its reader's role does not allow. Repeated failed sign-ins for one
name lock it for a while (:data:`MAX_FAILURES` in :data:`FAILURE_WINDOW`), whatever password
comes next.

A sign-in may start a session (:func:`start_session`): a random token the browser keeps, of
which the store keeps only a hash, so a reload signs the person in again without the password
(:func:`resume_session`) until it expires or ends (sign-out, a new role, a new password). A
person signed in by the team's OpenID Connect provider is the account an admin linked to the
email the provider vouched for (:func:`link_email`, :func:`sign_in_oidc`).

    >>> create_account(con, "ada", "correct horse battery", "admin")  # doctest: +SKIP
    >>> sign_in(con, "ada", "correct horse battery")  # doctest: +SKIP
    Account(name='ada', role='admin')
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlparse

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
# How long a reload keeps a person signed in: one working day, then the password again.
SESSION_LIFETIME = timedelta(hours=12)
SESSION_HOURS_ENV = "EVALKIT_SESSION_HOURS"  # set by `evalkit app --session-hours`

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
    """CREATE TABLE IF NOT EXISTS app_sessions (
        token_hash VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        expires_at TIMESTAMP NOT NULL,
        ended_at TIMESTAMP,
        ended_why VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS app_emails (
        email VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        linked_at TIMESTAMP NOT NULL,
        linked_by VARCHAR NOT NULL
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
    return _records(cursor)


def _records(cursor: duckdb.DuckDBPyConnection) -> list[dict]:
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
        was = _account_or_raise(con, name).role
        admins = con.execute("SELECT count(*) FROM app_accounts WHERE role = 'admin'").fetchone()
        if was == "admin" and role != "admin" and admins[0] == 1:
            raise EvalkitError(f"{name} is the last admin", hint="make another account admin first")
        con.execute("UPDATE app_accounts SET role = ? WHERE name = ?", [role, name])
        _end_sessions(con, name, "role changed")
        audit(con, by, "set_role", {"name": name, "from": was, "to": role}, page=page)
    return account


def set_password(
    con: duckdb.DuckDBPyConnection,
    by: Account,
    name: str,
    password: str,
    *,
    page: str | None = None,
) -> None:
    """Give ``name`` a new password (an admin, or the person themself); it ends their sessions,
    so a reload anywhere asks for the new one."""
    if by.name != name:
        require(by, "manage_accounts")
    _check_password(password)
    ensure_schema(con)
    with transaction(con):
        _account_or_raise(con, name)
        con.execute(
            "UPDATE app_accounts SET password_hash = ? WHERE name = ?",
            [_HASHER.hash(password), name],
        )
        _end_sessions(con, name, "password changed")
        audit(con, by, "set_password", {"name": name}, page=page)


def _account_or_raise(con: duckdb.DuckDBPyConnection, name: str) -> Account:
    row = con.execute("SELECT role FROM app_accounts WHERE name = ?", [name]).fetchone()
    if row is None:
        raise unknown_name("account", name, [a["name"] for a in list_accounts(con)])
    return Account(name, row[0])


def list_accounts(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every account's name, role and creation, by name (never the hashes)."""
    ensure_schema(con)
    cursor = con.execute(
        "SELECT name, role, created_at, created_by FROM app_accounts ORDER BY name"
    )
    return _records(cursor)


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


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the token it keeps (a cookie), whose it is, and until when."""

    token: str
    account: Account
    expires_at: datetime


def _token_hash(token: str) -> str:
    # The token is 256 random bits, so a fast hash is enough: nothing to guess from it.
    return hashlib.sha256(token.encode()).hexdigest()


def session_lifetime(hours: str | None) -> timedelta:
    """The app's setting (whole ``hours``, from ``$EVALKIT_SESSION_HOURS``) as a lifetime;
    :data:`SESSION_LIFETIME` when unset."""
    if hours is None:
        return SESSION_LIFETIME
    if not hours.isdigit() or int(hours) < 1:
        raise EvalkitError(
            f"${SESSION_HOURS_ENV} is {hours!r}: give a whole number of hours of at least 1"
        )
    return timedelta(hours=int(hours))


def start_session(
    con: duckdb.DuckDBPyConnection,
    account: Account,
    *,
    lifetime: timedelta = SESSION_LIFETIME,
    page: str | None = None,
) -> Session:
    """A new session for a signed-in ``account``: the token goes to the browser, only its
    hash into the store."""
    ensure_schema(con)
    token, now = secrets.token_urlsafe(32), utc_now()
    with transaction(con):
        con.execute(
            "INSERT INTO app_sessions VALUES (?, ?, ?, ?, NULL, NULL)",
            [_token_hash(token), account.name, now, now + lifetime],
        )
        audit(con, account, "start_session", {"expires_at": str(now + lifetime)}, page=page)
    return Session(token, account, now + lifetime)


def resume_session(
    con: duckdb.DuckDBPyConnection, token: str, *, page: str | None = None
) -> Session:
    """The session of ``token`` with its account's current role; :class:`SignInError` when the
    token is unknown (or altered), expired, ended, or its account is gone."""
    ensure_schema(con)
    row = con.execute(
        "SELECT s.name, s.expires_at, s.ended_why, a.role FROM app_sessions s "
        "LEFT JOIN app_accounts a USING (name) WHERE s.token_hash = ?",
        [_token_hash(token)],
    ).fetchone()
    if row is None:
        raise SignInError("this browser's session is unknown", hint="sign in again")
    name, expires_at, ended_why, role = row
    why = ended_why or (
        "the account is gone" if role is None else "expired" if expires_at <= utc_now() else None
    )
    with transaction(con):
        if why:
            audit(con, name, "sign_in_token_refused", {"why": why}, page=page)
        else:
            audit(con, Account(name, role), "sign_in_token", page=page)
    if why:
        raise SignInError(f"the session of {name} ended: {why}", hint="sign in again")
    return Session(token, Account(name, role), expires_at)


def end_session(
    con: duckdb.DuckDBPyConnection, session: Session, *, page: str | None = None
) -> None:
    """Sign out: the session's token is refused from now on."""
    ensure_schema(con)
    with transaction(con):
        con.execute(
            "UPDATE app_sessions SET ended_at = ?, ended_why = 'signed out' "
            "WHERE token_hash = ? AND ended_at IS NULL",
            [utc_now(), _token_hash(session.token)],
        )
        audit(con, session.account, "sign_out", page=page)


def _end_sessions(con: duckdb.DuckDBPyConnection, name: str, why: str) -> None:
    con.execute(
        "UPDATE app_sessions SET ended_at = ?, ended_why = ? WHERE name = ? AND ended_at IS NULL",
        [utc_now(), why, name],
    )


def oidc_providers(auth: Mapping) -> dict[str | None, str]:
    """The OpenID Connect providers of Streamlit's ``[auth]`` secrets, each as the argument
    ``st.login`` takes (None: the one configured in ``[auth]`` itself) and a name to show;
    empty when sign-in by a provider is not configured.

    >>> oidc_providers({"redirect_uri": "u", "cookie_secret": "s", "google": {"client_id": "c"}})
    {'google': 'Google'}
    """
    if not {"redirect_uri", "cookie_secret"} <= set(auth):
        return {}
    providers: dict[str | None, str] = {}
    if "client_id" in auth:
        providers[None] = (
            urlparse(str(auth.get("server_metadata_url"))).hostname or "single sign-on"
        )
    for name, section in auth.items():
        if isinstance(section, Mapping) and "client_id" in section:
            providers[name] = name.capitalize()
    return providers


def _email(email: str) -> str:
    email = email.strip().lower()
    if email.count("@") != 1 or not all(email.split("@")):
        raise EvalkitError(f"email {email!r}: give an address like name@example.org")
    return email


def link_email(
    con: duckdb.DuckDBPyConnection, by: Account, email: str, name: str, *, page: str | None = None
) -> None:
    """Let whoever the OpenID Connect provider signs in as ``email`` be the account ``name``
    (admins only; an email already linked moves to ``name``)."""
    require(by, "manage_accounts")
    email = _email(email)
    ensure_schema(con)
    with transaction(con):
        _account_or_raise(con, name)
        con.execute(
            "INSERT OR REPLACE INTO app_emails VALUES (?, ?, ?, ?)",
            [email, name, utc_now(), by.name],
        )
        audit(con, by, "link_email", {"email": email, "name": name}, page=page)


def unlink_email(
    con: duckdb.DuckDBPyConnection, by: Account, email: str, *, page: str | None = None
) -> None:
    """Stop signing ``email`` in (admins only)."""
    require(by, "manage_accounts")
    email = _email(email)
    ensure_schema(con)
    with transaction(con):
        if not con.execute(
            "DELETE FROM app_emails WHERE email = ? RETURNING 1", [email]
        ).fetchall():
            raise unknown_name("linked email", email, [e["email"] for e in linked_emails(con)])
        audit(con, by, "unlink_email", {"email": email}, page=page)


def linked_emails(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every linked email with its account, by email."""
    ensure_schema(con)
    cursor = con.execute(
        "SELECT e.email, e.name, a.role, e.linked_at, e.linked_by FROM app_emails e "
        "JOIN app_accounts a USING (name) ORDER BY e.email"
    )
    return _records(cursor)


def sign_in_oidc(
    con: duckdb.DuckDBPyConnection, claims: Mapping, *, page: str | None = None
) -> Account:
    """The account linked to the email of a person the team's OpenID Connect provider signed in
    (``claims``: ``st.user``); :class:`SignInError` when the provider sent no email, says it is
    not verified, or no account is linked to it."""
    if not claims.get("email"):
        raise SignInError(
            "the sign-in provider sent no email", hint="its client needs the 'email' scope"
        )
    email = _email(claims["email"])
    ensure_schema(con)
    row = None
    if claims.get("email_verified", True) is not False:  # some providers do not send the claim
        row = con.execute(
            "SELECT name, role FROM app_emails JOIN app_accounts USING (name) WHERE email = ?",
            [email],
        ).fetchone()
    with transaction(con):
        if row is None:
            audit(con, email, "sign_in_oidc_refused", page=page)
        else:
            audit(con, Account(*row), "sign_in_oidc", {"email": email}, page=page)
    if row is None:
        raise SignInError(
            f"no account is linked to the verified email {email}",
            hint="ask an admin to link it on the Admin page",
        )
    return Account(*row)
