"""A workspace with accounts and a small queue, and the app driven by Streamlit's AppTest; the
real app (`evalkit app`) and headless Chromium for the browser tests."""

import shutil
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from evalkit.accounts import Account, create_account
from evalkit.rating.queue import Item, add_items
from evalkit.store import open_store
from evalkit.workspace import ENV_VAR, Workspace, open_workspace
from monitor.stack import Background, free_port
from tests.conftest import binary_or_skip

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
PASSWORD = "correct horse battery"
ACCOUNTS = {"ann": "annotator", "eng": "engineer", "ops": "ops", "ada": "admin"}


def item(n: int, kind: str = "single") -> Item:
    pair = {"response_b": f"second answer {n}"} if kind == "pair" else {}
    return Item(
        kind, [{"role": "user", "content": f"question {n}"}], f"first answer {n}", {"n": n}, **pair
    )


@pytest.fixture(scope="session")
def accounts_store(tmp_path_factory):
    """A store with one account per role, made once (hashing passwords takes a while)."""
    path = tmp_path_factory.mktemp("accounts") / "evalkit.duckdb"
    with open_store(path) as con:
        for name, role in ACCOUNTS.items():
            create_account(con, name, PASSWORD, role)
    return path


@pytest.fixture
def workspace(tmp_path, monkeypatch, accounts_store):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "ws"))
    ws = open_workspace()
    shutil.copyfile(accounts_store, ws.store_path)
    return ws


def start_app(
    ws: Workspace, folder: Path, *, port: int | None = None, cwd: Path | None = None
) -> tuple[Background, str]:
    """`evalkit app` on ``ws``, started from ``cwd`` on a loopback ``port`` (default a free
    one), its log in ``folder``; the running server and its URL."""
    port = port or free_port()
    command = [sys.executable, "-m", "evalkit.cli", "app", "--workspace", str(ws.root)]
    url = f"http://127.0.0.1:{port}"
    log, ready = folder / "server.log", f"{url}/_stcore/health"
    app = Background.start("evalkit app", [*command, "--port", str(port)], log, ready, 60, cwd=cwd)
    return app, url


@pytest.fixture
def browser():
    """The system's Chromium, headless, driven by Playwright (nothing downloaded)."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = binary_or_skip("chromium")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


def queue(ws, items) -> None:
    with open_store(ws.store_path) as con:
        add_items(con, items)


def rows(ws, sql: str) -> list[tuple]:
    with open_store(ws.store_path) as con:
        return con.execute(sql).fetchall()


def sign_in(name: str, password: str = PASSWORD) -> AppTest:
    """A new browser session of the app, signed in as ``name``."""
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    at.button[0].click().run()
    return at


def press(at: AppTest, *keys: str) -> AppTest:
    """Press each key's button, as its keyboard shortcut does."""
    for key in keys:
        at.button(key=f"key-{key}").click().run()
        assert not at.exception, at.exception
    return at


def page(name: str, who: Account) -> AppTest:
    """One page of the app run on its own, as ``who`` (signed in)."""
    at = AppTest.from_file(str(APP.with_name("views") / f"{name}.py"), default_timeout=30)
    at.session_state["account"] = who
    return at.run()
