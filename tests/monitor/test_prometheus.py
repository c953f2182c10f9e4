"""The Grafana dashboard (monitor/grafana.json) over the server's metrics, checked against a real
Prometheus: it scrapes the server every second while the test drives traffic, then every panel's
query runs through Prometheus's HTTP API and must return data."""

import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import server_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "monitor" / "grafana.json"
MODEL = "micro"
# What Grafana puts in for the dashboard's variables; a window of several scrapes (1 s apart).
VARIABLES = {"model_name": MODEL, "__rate_interval": "30s", "__interval": "15s", "__range": "1m"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::[^}]*)?\}|(\w+))")
PROMPTS = [
    [{"role": "user", "content": "how are you?"}],
    [{"role": "user", "content": "what do you like to do?"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "any plans?"}],
]
SAMPLED = {"temperature": 1.0, "seed": 7}  # the micro model's greedy answers are empty


def _panels(panels: list[dict]):
    """Every panel, those inside (collapsed) rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]


def _substitute(expr: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown variable ${name} in {expr}"
        return VARIABLES[name]

    return VARIABLE.sub(value, expr)


def _get(url: str, **params) -> dict:
    query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
    with urllib.request.urlopen(url + query, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def _query(prometheus: str, expr: str) -> list[dict]:
    answer = _get(f"{prometheus}/api/v1/query", query=expr)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


@pytest.fixture
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def served(serving, tmp_path_factory):
    with serving(tmp_path_factory.mktemp("events")) as served:
        yield served


@pytest.fixture
def prometheus(served, prometheus_server):
    """A real Prometheus scraping the server every second; its base URL."""
    return prometheus_server([f"127.0.0.1:{served.port}"])


def _wait_for(condition, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


def _target_up(prometheus: str):
    targets = _get(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    return targets if targets and all(t["health"] == "up" for t in targets) else None


def _drive(served, prometheus: str, scrapes: int = 3) -> dict:
    """Chat completions (plain and streamed), feedback and events from elsewhere, from before
    Prometheus's first scrape (its discovery takes ~5 s) until a few scrapes after it."""
    sent = {"plain": 0, "streamed": 0}
    started, until = time.monotonic(), math.inf
    i = 0
    while time.monotonic() < until:
        if until == math.inf and _target_up(prometheus):
            until = time.monotonic() + scrapes  # 1 s apart
        assert time.monotonic() - started < 30, "Prometheus never scraped the server"
        messages = PROMPTS[i % len(PROMPTS)]
        answer = served.client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, **SAMPLED
        )
        sent["plain"] += 1
        verdict = {"response_id": answer.id, "thumbs": "up" if i % 2 else "down"}
        verdict |= {"rating": 1 + i % 5} if i % 2 else {"comment": "too short"}
        assert _post(f"{served.base}/v1/feedback", verdict) == 200
        if i % 2 == 0:
            stream = served.client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=12, stream=True, **SAMPLED
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            sent["streamed"] += 1
        elsewhere = {"events": [{"prompt": messages, "response": f"fine {i}", "model": "vllm"}]}
        assert _post(f"{served.base}/v1/events", elsewhere) == 200
        i += 1
        time.sleep(0.1)
    return sent


def test_the_dashboard_is_a_grafana_dashboard_over_every_server_metric(dashboard):
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model_name"]["datasource"]["uid"] == "${datasource}"
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24 and box["h"] > 0
        columns = range(box["x"], box["x"] + box["w"])
        cover = {(x, y) for x in columns for y in range(box["y"], box["y"] + box["h"])}
        assert not cells & cover, f"{panel['title']} overlaps another panel"
        cells |= cover
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    # Every metric the server exports is on the dashboard, and every metric queried exists.
    registry = CollectorRegistry()
    server_metrics(registry)
    exported = {f.name for f in registry.collect()}
    queried = {
        name
        for _, target in _targets(dashboard)
        for name in re.findall(r"\b(evalkit_\w+)", target["expr"])
    }
    family = re.compile(r"_(bucket|sum|count|total)$")
    assert {family.sub("", name) for name in queried} == exported
    for title, target in _targets(dashboard):
        # A regex match, so that several models (and All, ".+") can be selected.
        assert 'model_name=~"$model_name"' in target["expr"], title
        assert "$" not in _substitute(target["expr"])


def test_every_panel_query_returns_data_from_a_real_prometheus(served, prometheus, dashboard):
    sent = _drive(served, prometheus)

    registry = served.server.registry

    def scraped_all() -> bool:
        # Prometheus has the server's final counts: every request and event of the traffic.
        for metric in ("evalkit_requests_total", "evalkit_events_ingested_total"):
            value = sum(
                s.value
                for family in registry.collect()
                for s in family.samples
                if s.name == metric and s.labels["model_name"] == MODEL
            )
            found = _query(prometheus, f'sum({metric}{{model_name="{MODEL}"}})')
            if not found or float(found[0]["value"][1]) != value:
                return False
        return True

    _wait_for(scraped_all, "Prometheus to scrape the final counts")
    (target,) = _target_up(prometheus)
    assert target["lastError"] == "" and target["labels"]["job"] == "evalkit"

    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "model_name")
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
    values = _get(f"{prometheus}/api/v1/label/{label}/values", **{"match[]": metric})
    assert values["data"] == [MODEL]

    results = {}
    for title, target in _targets(dashboard):
        expr = _substitute(target["expr"])
        result = _query(prometheus, expr)
        assert result, f"panel {title!r}: no data for {expr}"
        numbers = [float(series["value"][1]) for series in result]
        assert all(math.isfinite(n) and n >= 0 for n in numbers), (title, expr, result)
        results[(title, target["refId"])] = result

    def by(panel: str, label: str, ref: str = "A") -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in results[(panel, ref)]}

    ((info,),) = [results[key] for key in results if key[0] == "Model"]
    identity = served.server.identity
    assert info["metric"]["version"] == identity["model_hash"]
    assert info["metric"]["chat_template_fingerprint"] == identity["chat_template_fingerprint"]
    assert by("Chat template", "model_name") == {MODEL: 0}
    assert by("Events lost", "model_name") == {MODEL: 0}
    assert by("Requests by status", "status")["200"] > 0
    assert by("Requests by finish reason", "finish_reason")["length"] > 0
    assert set(by("Feedback by kind", "kind")) >= {"thumbs_up", "thumbs_down", "rating", "comment"}
    assert by("Generated tokens", "model_name")[MODEL] > 0
    assert by("Events ingested and lost", "model_name", "A")[MODEL] > 0
    p50, p99 = (by("End-to-end latency", "", ref)[""] for ref in "AB")
    assert 0 < p50 <= p99
    # Every request answered is counted: the streamed ones too.
    total = _query(prometheus, f'sum(evalkit_requests_total{{model_name="{MODEL}",status="200"}})')
    assert float(total[0]["value"][1]) == sent["plain"] + sent["streamed"]
