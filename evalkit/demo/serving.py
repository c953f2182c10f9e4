"""Steps 6-7: v1 served with its drift job (and a real Prometheus and Alertmanager where they
are installed), the traffic replayed to it with simulated users' feedback, and what the drift
monitoring saw, timed against the drift episode."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from evalkit.demo.config import SERVED, DemoConfig
from evalkit.demo.data import Data
from evalkit.demo.progress import say
from evalkit.workspace import Workspace


@dataclass
class Serving:
    """v1 served, and its Prometheus and Alertmanager if any; :meth:`stop` ends them all."""

    url: str
    server: object  # monitor.stack.Background
    alerting: object | None  # monitor.stack.Alerting, or None without Prometheus
    note: str

    def stop(self) -> None:
        if self.alerting is not None:
            self.alerting.stop()
        self.server.stop()


def serve(ws: Workspace, config: DemoConfig, model: Path, data: Data, folder: Path) -> Serving:
    """``evalkit serve`` on ``model`` with its drift job against the reference traffic, and
    Prometheus and Alertmanager beside it where installed; logs and configs in ``folder``."""
    from monitor.stack import Background, free_port, missing_binaries, start_alerting

    port = free_port()
    command = [sys.executable, "-m", "evalkit.cli", "--workspace", str(ws.root), "serve"]
    command += [
        "--model", str(model), "--name", SERVED, "--port", str(port),
        "--flush-seconds", "0.2",
        "--drift-reference", f"file:{data.reference_events}",
        "--drift-features", "topic,prompt_embedding",  # what a prompt says; not the answers
        "--drift-window-events", str(config.window_events),
        "--drift-every", f"{config.every_s:g}s",
        "--drift-hold", str(config.hold),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server = Background.start("evalkit serve", command, folder / "serve.log", f"{url}/healthz", 600)
    say(f"serving {model} as {SERVED!r} at {url} (log {folder / 'serve.log'})")
    missing = missing_binaries()
    if missing:
        note = f"without Prometheus and Alertmanager ({', '.join(missing)} not installed)"
        say(f"{note}: the drift alerts are read from the store")
        return Serving(url, server, None, note)
    try:
        alerting = start_alerting(
            folder / "monitoring", url.removeprefix("http://"),
            drift_for_s=(config.hold - 1) * config.every_s,
        )  # fmt: skip
    except Exception:
        server.stop()
        raise
    note = (
        f"with a real Prometheus ({alerting.prometheus}) and Alertmanager ({alerting.alertmanager})"
    )
    say(note)
    return Serving(url, server, alerting, note)


@dataclass
class Traffic:
    """What was replayed, and when (the drift is timed against ``drift_started``)."""

    started: float  # Unix seconds
    drift_started: float
    ended: float
    sent: int
    answered: int
    feedback: dict[str, int]


def _post(url: str, body: dict) -> None:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def _alerted(ws: Workspace, since: float) -> bool:
    """Whether the drift job has opened an alert since ``since`` (Unix seconds)."""
    from evalkit.store import open_store

    if not ws.store_path.is_file():
        return False
    with open_store(ws.store_path, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "drift_alerts" not in tables:
            return False
        query = "SELECT count(*) FROM drift_alerts WHERE model = ? AND epoch(started_at) >= ?"
        return con.execute(query, [SERVED, since]).fetchone()[0] > 0


def send_traffic(ws: Workspace, config: DemoConfig, serving: Serving, data: Data) -> Traffic:
    """The calm traffic, then the drift episode; then simulated users' feedback."""
    from evalkit.events import query
    from evalkit.rating.simulated import prompt_key, thumbs
    from finetune.data.split import seeded_key
    from monitor.replay import replay

    def send(prompts: list[str], seconds: float, seed: int):
        return replay(
            serving.url, prompts, [], rate=config.rate, duration=seconds,
            max_tokens=config.reply_tokens, seed=seed,
        )  # fmt: skip

    # Each call returns once its requests are answered, so a slow server is sent less, not
    # queued more. The episode goes on, a pass's worth at a time, until the drift alert fires
    # (at most four times drift_s): a loaded machine judges later, never wrongly.
    started = time.time()
    done = [send(data.calm, config.calm_s, config.seed)]
    drift_started = time.time()
    while True:
        done.append(send(data.drift_prompts, config.every_s, config.seed + len(done)))
        elapsed = time.time() - drift_started
        if elapsed >= 4 * config.drift_s or (
            elapsed >= config.drift_s and _alerted(ws, drift_started)
        ):
            break
    ended = time.time()
    sent, answered = sum(d.sent for d in done), sum(d.answered for d in done)
    failed = ", ".join(f"{n} {why}" for d in done for why, n in d.failed.items()) or "none failed"
    say(
        f"replayed {sent} requests in {ended - started:.0f} s ({ended - drift_started:.0f} s of "
        f"drift): {answered} answered, {failed}"
    )
    time.sleep(1.0)  # the server writes its log every 0.2 s
    exchanges = query(
        ws.events_dir,
        "SELECT response_id, prompt, response FROM events WHERE type = 'exchange' "
        "AND response IS NOT NULL AND epoch(timestamp) >= ? ORDER BY response_id",
        [started],  # this run's (a workspace may hold an earlier demo's)
    )
    # Simulated users: a seeded third of them (by what was asked and answered) give thumbs,
    # by the simulated annotator's rule against the reference answer.
    counts = {"up": 0, "down": 0}
    for row in exchanges:
        prompt = json.loads(row["prompt"])
        reference = data.references.get(prompt_key(prompt))
        if reference is None or seeded_key(config.seed, prompt_key(prompt) + row["response"]) % 3:
            continue
        verdict = thumbs(row["response"], reference)
        _post(f"{serving.url}/v1/feedback", {"response_id": row["response_id"], "thumbs": verdict})
        counts[verdict] += 1
    say(f"simulated users gave {counts['up']} thumbs up and {counts['down']} down")
    return Traffic(started, drift_started, ended, sent, answered, counts)


def drift_timing(traffic: Traffic, serving: Serving, config: DemoConfig) -> dict:
    """When Prometheus first had the drift alert firing (Unix seconds, None: never), and how
    many such alerts Alertmanager holds; read while the server still runs. Empty without
    Prometheus."""
    from monitor.stack import DRIFT_ALERT

    timing: dict = {}
    if serving.alerting is not None:
        deadline = time.time() + 4 * config.every_s * config.hold
        fired = None
        while fired is None and time.time() < deadline:  # the rule's `for:` after the job's
            fired = serving.alerting.firing_since(DRIFT_ALERT, traffic.started, time.time())
            time.sleep(0.5)
        timing["prometheus_fired"] = fired
        timing["alertmanager_received"] = len(serving.alerting.received(DRIFT_ALERT))
    return timing


def read_drift(ws: Workspace, traffic: Traffic) -> dict:
    """The drift job's passes and alerts from the store, timed against the episode."""
    from evalkit.store import open_store

    with open_store(ws.store_path, read_only=True) as con:
        # this run's (a workspace may hold an earlier demo's)
        alerts = con.execute(
            "SELECT feature, epoch(started_at) FROM drift_alerts WHERE model = ? "
            "AND epoch(started_at) >= ? ORDER BY started_at",
            [SERVED, traffic.started],
        ).fetchall()
        passes = con.execute(
            "SELECT epoch(judged_at), bool_or(drifted), max(events) FROM drift_results "
            "WHERE model = ? AND epoch(judged_at) >= ? "
            "GROUP BY pass_id, judged_at ORDER BY judged_at",
            [SERVED, traffic.started],
        ).fetchall()
    calm = [p for p in passes if p[0] < traffic.drift_started]
    return {
        "alerts": [(feature, at - traffic.drift_started) for feature, at in alerts],
        "calm_passes": len(calm),
        "calm_passes_drifted": sum(1 for p in calm if p[1]),
        "episode_passes": len(passes) - len(calm),
    }
