"""A served model's monitoring on one machine: programs in the background, and a real
Prometheus and Alertmanager beside them when their Debian packages are installed.

:class:`Background` runs a program (``evalkit serve``, Prometheus, Alertmanager) with its output
in a log file, waits until it answers on a URL, and stops it; :func:`free_port` picks the
loopback port it listens on. :func:`start_prometheus` and :func:`start_alertmanager` start one
of them with a config file, on a free loopback port. :func:`start_alerting` writes the
demo's configs into a folder (Prometheus scraping the server every second and evaluating the
shipped rules of ``monitor/rules``, its alerts sent to Alertmanager) and starts both. The rules
are the shipped ones, except that the drift alert's ``for:`` is set to the drift job's own
hold, ``(hold - 1) x every``, as the rule file says to keep it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.errors import EvalkitError

RULES = Path(__file__).with_name("rules") / "evalkit.rules.yml"
DRIFT_ALERT = "EvalkitDriftDetected"
BINARIES = ("prometheus", "prometheus-alertmanager")


def free_port() -> int:
    """A port free on 127.0.0.1 now (the kernel's pick), for a server bound to loopback only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Background:
    """A program in the background, its output in ``log``."""

    name: str
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        log: Path,
        ready_url: str,
        timeout: float,
        *,
        cwd: Path | None = None,
    ):
        """Start ``command`` (in the folder ``cwd``, default this process's) and wait until
        ``ready_url`` answers 200 (or fail with its log)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        running = cls(name, process, log)
        deadline = time.monotonic() + timeout
        while not _answers(ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                running.stop()
                tail = log.read_text(errors="replace")[-2000:]
                raise EvalkitError(f"{name} did not start (log {log}):\n{tail}")
            time.sleep(0.1)
        return running

    def stop(self) -> None:
        """SIGTERM (a server flushes its log), then SIGKILL if it does not end in 20 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _yaml(path: Path, value: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(value, sort_keys=False))
    return path


def _rules(out: Path, drift_for_s: float) -> Path:
    """The shipped rules with the drift alert held ``drift_for_s`` seconds."""
    import yaml

    groups = yaml.safe_load(RULES.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == DRIFT_ALERT:
                rule["for"] = f"{drift_for_s:g}s"
    return _yaml(out, groups)


@dataclass
class Alerting:
    """A running Prometheus and Alertmanager; :meth:`stop` ends both."""

    prometheus: str  # base URLs
    alertmanager: str
    programs: list[Background] = field(default_factory=list)

    def stop(self) -> None:
        for program in reversed(self.programs):
            program.stop()

    def firing_since(self, alert: str, start: float, end: float) -> float | None:
        """When Prometheus first had ``alert`` firing between ``start`` and ``end`` (Unix
        seconds), from its ``ALERTS`` series; None if it never did."""
        query = f'ALERTS{{alertname="{alert}",alertstate="firing"}}'
        params = {"query": query, "start": start, "end": end, "step": "1s"}
        url = f"{self.prometheus}/api/v1/query_range?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            series = json.load(response)["data"]["result"]
        times = [float(t) for s in series for t, _ in s["values"]]
        return min(times) if times else None

    def received(self, alert: str) -> list[dict]:
        """The alerts called ``alert`` that Alertmanager holds (its API)."""
        with urllib.request.urlopen(f"{self.alertmanager}/api/v2/alerts", timeout=10) as response:
            alerts = json.load(response)
        return [a for a in alerts if a["labels"].get("alertname") == alert]


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def prometheus_config(targets: list[str], rule_files: list, alertmanager: str | None) -> dict:
    """Prometheus scraping ``targets`` ("host:port") and evaluating ``rule_files`` every second,
    its alerts sent to ``alertmanager`` (a base URL; None: nowhere)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(f) for f in rule_files],
        "scrape_configs": [{"job_name": "evalkit", "static_configs": [{"targets": targets}]}],
    }
    if alertmanager:
        host = alertmanager.removeprefix("http://")
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    return config


def _listening(name: str, command: list[str], folder: Path) -> tuple[Background, str]:
    """A program of the Prometheus family on a free loopback port, with only warnings in its log
    ``folder/NAME.log``; it and its base URL, once it is ready."""
    address = f"127.0.0.1:{free_port()}"
    command = [*command, f"--web.listen-address={address}", "--log.level=warn"]
    ready = f"http://{address}/-/ready"
    return Background.start(name, command, folder / f"{name}.log", ready, 60), f"http://{address}"


def start_prometheus(folder: Path, config: Path) -> tuple[Background, str]:
    """Prometheus with ``config`` (a file), its data and log in ``folder``; it and its URL."""
    data = f"--storage.tsdb.path={folder / 'prometheus-data'}"
    return _listening("prometheus", ["prometheus", f"--config.file={config}", data], folder)


def start_alertmanager(folder: Path, config: Path) -> tuple[Background, str]:
    """Alertmanager with ``config`` (a file), without its cluster port, its data and log in
    ``folder``; it and its URL."""
    data = f"--storage.path={folder / 'alertmanager-data'}"
    command = ["prometheus-alertmanager", f"--config.file={config}", data]
    return _listening("alertmanager", [*command, "--cluster.listen-address="], folder)


def start_alerting(folder: Path, target: str, *, drift_for_s: float) -> Alerting:
    """Alertmanager, then Prometheus scraping ``target`` ("host:port") every second with the
    shipped rules, both on free loopback ports, with their configs, data and logs in
    ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {"receiver": "log", "group_wait": "1s", "group_interval": "1s"},
        "receivers": [{"name": "log"}],  # kept in Alertmanager, shown by its API and UI
    }
    alertmanager, alertmanager_url = start_alertmanager(
        folder, _yaml(folder / "alertmanager.yml", config)
    )
    rules = _rules(folder / "evalkit.rules.yml", drift_for_s)
    config = prometheus_config([target], [rules], alertmanager_url)
    try:
        prometheus, prometheus_url = start_prometheus(
            folder, _yaml(folder / "prometheus.yml", config)
        )
    except EvalkitError:
        alertmanager.stop()
        raise
    return Alerting(prometheus_url, alertmanager_url, [alertmanager, prometheus])
