"""Start the app: ``streamlit run`` on ``dashboards/app.py``, with the workspace passed on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from evalkit.accounts import SESSION_HOURS_ENV
from evalkit.workspace import ENV_VAR
from monitor.overview import PROMETHEUS_ENV

APP = Path(__file__).with_name("app.py")


def command(*, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The ``streamlit run`` command line: headless, no usage statistics, no file watcher, and
    no full garbage collection after every run (Streamlit's default: with the library's modules
    loaded it took most of the server's time per rating; Python's own collector still runs)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--runner.postScriptGC", "false",
    ]  # fmt: skip


def run_app(
    workspace: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    prometheus: str | None = None,
    session_hours: int | None = None,
) -> None:
    """Serve the app on ``workspace`` until stopped: this process becomes Streamlit's (exec),
    so a signal sent to ``evalkit app`` (Ctrl+C, SIGTERM from a supervisor) stops the server
    itself rather than leaving it running orphaned. The Drift page reads firing alerts from
    ``prometheus`` (a URL) when given. A sign-in lasts ``session_hours`` across reloads
    (default: :data:`evalkit.accounts.SESSION_LIFETIME`)."""
    env = {**os.environ, ENV_VAR: str(workspace)}
    if prometheus:
        env[PROMETHEUS_ENV] = prometheus
    if session_hours:
        env[SESSION_HOURS_ENV] = str(session_hours)
    print(f"evalkit app on http://{host}:{port} (workspace {workspace}); Ctrl+C stops it")
    sys.stdout.flush()
    args = command(host=host, port=port)
    os.execve(args[0], args, env)
