"""What the monitor's tests share: free loopback ports, a real server (uvicorn on a thread) over
the micro model, and real programs in the background (`evalkit serve`, Prometheus, Alertmanager,
a webhook receiver), all on loopback and always stopped at the end. The programs are started as
the demo starts them, by :mod:`monitor.stack`."""

import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
import uvicorn
import yaml

from monitor import stack
from monitor.events import LogConfig
from monitor.server import ServeConfig, Server, create_app


@pytest.fixture(scope="session")
def free_port():
    return stack.free_port


@pytest.fixture(scope="session")
def serving(micro_model):
    """``with serving(events_dir) as served:`` the micro model served as "micro" on a free
    port: ``served.base``, ``.port``, ``.client`` (openai), ``.server``, ``.events``."""

    @contextmanager
    def serve(events, **overrides):
        options = {"name": "micro", "max_tokens": 16, "log": LogConfig(max_age_s=0.1)}
        server = Server(ServeConfig(str(micro_model), **(options | overrides)), events)
        port = stack.free_port()
        web = uvicorn.Server(
            uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        deadline = time.time() + 30
        while not web.started and time.time() < deadline:
            time.sleep(0.05)
        assert web.started
        base = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        try:
            yield SimpleNamespace(base=base, port=port, client=client, server=server, events=events)
        finally:
            web.should_exit = True
            thread.join(timeout=30)

    return serve


@pytest.fixture
def background():
    """A list to put each started :class:`monitor.stack.Background` in. Every one is stopped at the
    end of the test and its log printed, which pytest shows when the test fails."""
    programs: list[stack.Background] = []
    yield programs
    for program in reversed(programs):
        program.stop()
        print(f"----- {program.name} (exit {program.process.returncode}) -----")
        print(program.log.read_text(errors="replace")[-6000:])


@pytest.fixture
def evalkit_serve(background, micro_model, tmp_path):
    """``evalkit_serve(*flags, workspace=None)``: `evalkit serve` on the micro model, named
    "micro", as a process on a free loopback port over ``workspace`` (default: a new one); its
    base URL."""

    def start(*flags: str, workspace: Path | None = None) -> str:
        port = stack.free_port()
        workspace = workspace or tmp_path / "workspace"
        command = [sys.executable, "-m", "evalkit.cli", "--workspace", str(workspace)]
        command += ["serve", "--model", str(micro_model), "--name", "micro", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "evalkit-serve.log"
        # 120 s: a model and a drift reference to load on a busy CPU
        server = stack.Background.start(
            "evalkit serve", [*command, *flags], log, f"{base}/healthz", 120
        )
        background.append(server)
        return base

    return start


def _written(path: Path, config: dict, check: list[str]) -> Path:
    """``config`` written as YAML to ``path``, once the program's own ``check`` accepts it."""
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([*check, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, f"{path.name}: {run.stdout}{run.stderr}"
    return path


@pytest.fixture
def prometheus_server(background, tmp_path, require_binary):
    """``prometheus_server(targets, rule_files=(), alertmanager=None)``: a real Prometheus on a free
    loopback port that scrapes ``targets`` ("host:port") and evaluates the rules every second,
    sending alerts to ``alertmanager`` (a base URL); its base URL."""
    require_binary("prometheus")
    promtool = require_binary("promtool")  # in the same Debian package

    def start(targets: list[str], rule_files=(), alertmanager: str | None = None) -> str:
        config = stack.prometheus_config(targets, rule_files, alertmanager)
        path = _written(tmp_path / "prometheus.yml", config, [promtool, "check", "config"])
        program, url = stack.start_prometheus(tmp_path, path)
        background.append(program)
        return url

    return start


@pytest.fixture
def alertmanager_server(background, tmp_path, require_binary):
    """``alertmanager_server(webhook_url)``: a real Alertmanager on a free loopback port, without
    its cluster port, that sends each alert (its own group) to ``webhook_url`` within a second, and
    again when it resolves; its base URL."""
    require_binary("prometheus-alertmanager")
    amtool = require_binary("amtool")  # in the same Debian package

    def start(webhook_url: str) -> str:
        config = {
            "global": {"resolve_timeout": "10s"},
            "route": {
                "receiver": "webhook",
                "group_by": ["..."],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        }
        path = _written(tmp_path / "alertmanager.yml", config, [amtool, "check-config"])
        program, url = stack.start_alertmanager(tmp_path, path)
        background.append(program)
        return url

    return start


@pytest.fixture
def webhook():
    """A webhook receiver on a free loopback port: ``.url``, and ``.received``, the JSON bodies
    POSTed to it, in order."""
    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):  # quiet: the test prints what it needs
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/", received=received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
