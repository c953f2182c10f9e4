"""The Prometheus rules (monitor/rules/): promtool accepts them, their unit tests (rules/ here)
pass and cover every rule, each alert says what to do, and every metric they read is one the
server exports."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.metrics import drift_metrics, server_metrics

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "monitor" / "rules").glob("*.yml"))
UNIT_TESTS = sorted((Path(__file__).parent / "rules").glob("*.yml"))
SEVERITIES = {"page", "ticket"}


def _rules(kind: str) -> list[dict]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def _cases(kind: str) -> list[dict]:
    return [
        case
        for path in UNIT_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get(kind, [])
    ]


def _promtool(require_binary, *args: str) -> None:
    run = subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True)
    assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}{run.stderr}"


def test_promtool_accepts_the_rules(require_binary):
    assert RULE_FILES
    _promtool(require_binary, "check", "rules", *map(str, RULE_FILES))


def test_the_rules_pass_their_unit_tests(require_binary):
    assert UNIT_TESTS
    _promtool(require_binary, "test", "rules", *map(str, UNIT_TESTS))


def test_every_alert_is_tested_firing_and_not_firing():
    cases = _cases("alert_rule_test")
    for alert in _rules("alert"):
        name = alert["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name} is never tested firing"
        assert any(not case.get("exp_alerts") for case in mine), f"{name} is never tested quiet"


def test_every_recording_rule_is_tested():
    tested = " ".join(case["expr"] for case in _cases("promql_expr_test"))
    for rule in _rules("record"):
        assert re.search(rf"{re.escape(rule['record'])}\b", tested), rule["record"]


def test_every_alert_has_a_severity_and_says_what_to_do():
    readme = (ROOT / "README.md").read_text()
    runbooks = readme[readme.index("### Runbooks") :]
    for alert in _rules("alert"):
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert alert["annotations"].keys() == {"summary", "description", "runbook"}, name
        assert alert["annotations"]["runbook"] == f"README.md#runbooks ({name})"
        assert f"**{name}**" in runbooks, f"no runbook for {name} in README.md"
        assert alert.get("for"), f"{name} fires on one evaluation"


@pytest.mark.parametrize("kind", ["record", "alert"])
def test_the_rules_read_only_metrics_the_server_exports(kind):
    registry = CollectorRegistry()
    server_metrics(registry)
    drift_metrics(registry)
    exported = {family.name for family in registry.collect()}
    suffix = re.compile(r"_(bucket|sum|count|total)$")
    for rule in _rules(kind):
        read = {suffix.sub("", name) for name in re.findall(r"\bevalkit_\w+", rule["expr"])}
        assert read <= exported, f"{rule[kind]} reads {read - exported}, which no server exports"
