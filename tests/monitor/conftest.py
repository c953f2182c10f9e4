"""What the monitor's tests share: free loopback ports, and a real server (uvicorn on a thread)
over the micro model, always stopped at the end."""

import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import openai
import pytest
import uvicorn

from monitor.events import LogConfig
from monitor.server import ServeConfig, Server, create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    return _free_port


@pytest.fixture(scope="session")
def serving(micro_model):
    """``with serving(events_dir) as served:`` the micro model served as "micro" on a free
    port: ``served.base``, ``.port``, ``.client`` (openai), ``.server``, ``.events``."""

    @contextmanager
    def serve(events, **overrides):
        options = {"name": "micro", "max_tokens": 16, "log": LogConfig(max_age_s=0.1)}
        server = Server(ServeConfig(str(micro_model), **(options | overrides)), events)
        port = _free_port()
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
