"""Alerts end to end, with real parts: `evalkit serve` as a process, a real Prometheus scraping it
and evaluating the shipped rules (their `for:` shortened), and a real Alertmanager that delivers
to a webhook the test runs on loopback."""

import itertools
import json
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import openai
import yaml
from transformers import AutoConfig, AutoTokenizer

from finetune.data.corpora import load_chitchat, load_support_faq, load_topics

RULES = Path(__file__).resolve().parents[2] / "monitor" / "rules" / "evalkit.rules.yml"
SAMPLED = {"temperature": 1.0, "seed": 7, "max_tokens": 4}  # greedy answers are empty
EVERY, HOLD = 2, 3  # the drift job: a pass every 2 s, an alert after 3 drifted windows in a row


def _shortened(rules: Path, out: Path, hold: str) -> Path:
    """A copy of a rule file with every `for:` set to ``hold``, so a test sees alerts fire in
    seconds; the expressions are the shipped ones."""
    groups = yaml.safe_load(rules.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = hold
    out.write_text(yaml.safe_dump(groups, sort_keys=False))
    return out


def _get(url: str, **params) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(url + query, timeout=10) as response:
        return json.loads(response.read())


def _alerts(prometheus: str, name: str) -> list[dict]:
    """Prometheus's alerts called ``name``, pending and firing."""
    alerts = _get(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name]


def _delivered(webhook, name: str, status: str) -> list[dict]:
    """The alerts called ``name`` that Alertmanager has POSTed with ``status``."""
    return [
        alert
        for body in webhook.received
        for alert in body["alerts"]
        if alert["labels"]["alertname"] == name and alert["status"] == status
    ]


def _wait_for(condition, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.25)
    return result


class _Traffic:
    """Chat completions on ``clients`` threads, one after another on each, until stopped (the
    server batches the concurrent ones); ``prompts`` drawn in turn. Every one must be answered."""

    def __init__(self, base: str, prompts: list[str], clients: int = 4):
        self.client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        self.prompts, self.sent = prompts, itertools.count()
        self.errors: list[Exception] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        while not self.stopped.is_set():
            prompt = self.prompts[next(self.sent) % len(self.prompts)]
            try:
                self.client.chat.completions.create(
                    model="micro", messages=[{"role": "user", "content": prompt}], **SAMPLED
                )
            except openai.OpenAIError as exc:
                self.errors.append(exc)
                return

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, failure, *exc):
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert failure or not self.errors, self.errors  # the test's own failure comes first


def _prompts(records: list[dict], model_dir: Path, seed: int) -> list[str]:
    """The first user turns of ``records`` that fit the model's context with an answer, shuffled
    (seeded): the micro model reads 64 tokens, and the server refuses a prompt over that."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    context = AutoConfig.from_pretrained(model_dir).n_positions

    def fits(prompt: str) -> bool:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        return len(ids) + SAMPLED["max_tokens"] <= context

    turns = [r["messages"][0]["content"] for r in records if r["messages"][0]["role"] == "user"]
    prompts = [t for t in turns if fits(t)]
    random.Random(seed).shuffle(prompts)
    return prompts


def _reference(path: Path, prompts: list[str]) -> Path:
    """An events file (JSONL, as `evalkit monitor import` reads it) of exchanges of ``prompts``."""
    with path.open("w") as out:
        for i, prompt in enumerate(prompts):
            event = {
                "timestamp": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                "model": "micro",
                "prompt": json.dumps([{"role": "user", "content": prompt}]),
                "response": "",
            }
            out.write(json.dumps(event) + "\n")
    return path


def _query(prometheus: str, expr: str) -> list[dict]:
    return _get(f"{prometheus}/api/v1/query", query=expr)["data"]["result"]


def test_a_drift_episode_fires_the_drift_alert_delivers_it_and_resolves(
    evalkit_serve,
    prometheus_server,
    alertmanager_server,
    webhook,
    tmp_path,
    drift_cache,
    micro_model,
):
    """Support questions (calm: the reference's kind), then chatterbot topics and chit-chat (the
    drift episode), then support questions again. The drift job inside `evalkit serve` judges
    the last 50 exchanges on their prompts' topic and embedding every EVERY seconds; the shipped
    rule holds its decision as long as the job holds its own alerts, (HOLD - 1) x EVERY."""
    support = _prompts(load_support_faq(), micro_model, seed=0)
    reference, calm = support[:210], support[210:]  # the calm traffic is held out
    drift = _prompts(load_topics() + load_chitchat()[:1000], micro_model, seed=1)
    workspace = tmp_path / "workspace"
    shutil.copytree(drift_cache, workspace / "drift")  # the topic classifier, trained once
    server = evalkit_serve(
        "--flush-seconds", "0.5",
        "--drift-reference", f"file:{_reference(tmp_path / 'reference.jsonl', reference)}",
        "--drift-features", "topic,prompt_embedding",
        "--drift-window-events", "50",
        "--drift-every", f"{EVERY}s",
        "--drift-hold", str(HOLD),
        workspace=workspace,
    )  # fmt: skip
    alertmanager = alertmanager_server(webhook.url)
    rules = _shortened(RULES, tmp_path / "evalkit.rules.yml", f"{(HOLD - 1) * EVERY}s")
    prometheus = prometheus_server([server.removeprefix("http://")], [rules], alertmanager)
    drift_alerts = lambda: _alerts(prometheus, "EvalkitDriftDetected")  # noqa: E731

    with _Traffic(server, calm):
        # A full window of calm traffic judged, and no drift in it.
        _wait_for(
            lambda: _query(prometheus, 'evalkit_drift_window_events{model_name="micro"} >= 50'),
            "a full window judged",
            timeout=90,
        )
        time.sleep(HOLD * EVERY)  # enough passes to raise an alert, were there drift
        judged = _query(prometheus, 'evalkit_drift_detected{model_name="micro"}')
        assert {s["metric"]["feature"] for s in judged} == {"topic", "prompt_embedding"}
        assert all(s["value"][1] == "0" for s in judged), judged
        assert not drift_alerts()
        assert not _delivered(webhook, "EvalkitDriftDetected", "firing")
        # Every shipped rule evaluates in a real Prometheus over the server's series.
        groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
        for rule in (rule for group in groups for rule in group["rules"]):
            assert rule["health"] == "ok", rule

    onset = time.monotonic()
    with _Traffic(server, drift):
        firing = _wait_for(
            lambda: [a for a in drift_alerts() if a["state"] == "firing"], "drift to fire", 90
        )
        fired = time.monotonic() - onset
        (delivered, *_) = _wait_for(
            lambda: _delivered(webhook, "EvalkitDriftDetected", "firing"), "its delivery", 15
        )
        command = [sys.executable, "-m", "evalkit.cli", "monitor", "alerts"]
        listed = subprocess.run(
            [*command, "--prometheus", prometheus], capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0 and "EvalkitDriftDetected" in listed.stdout, listed
    print(f"drift alert firing {fired:.1f} s after the episode's onset")
    assert {a["labels"]["feature"] for a in firing} <= {"topic", "prompt_embedding"}
    assert delivered["labels"]["model_name"] == "micro"
    assert delivered["labels"]["severity"] == "ticket"
    assert delivered["annotations"]["runbook"] == "README.md#runbooks (EvalkitDriftDetected)"

    def features(status: str) -> set[str]:
        return {a["labels"]["feature"] for a in _delivered(webhook, "EvalkitDriftDetected", status)}

    with _Traffic(server, calm):
        _wait_for(lambda: not drift_alerts(), "the drift alert to resolve", 90)
        _wait_for(lambda: features("resolved") == features("firing"), "its resolution", 15)
