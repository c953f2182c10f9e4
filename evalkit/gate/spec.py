"""A gate spec: the rules, read from TOML and checked."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.contamination import NGRAM
from evalkit.errors import EvalkitError, check_keys, unknown_name
from evalkit.stats import ALPHA, MIN_RESAMPLES, N_RESAMPLES, SEED
from evalkit.suite import read_toml

DIRECTIONS = {
    "max_increase": (1, False),
    "max_drop": (-1, False),
    "max_relative_increase": (1, True),
    "max_relative_drop": (-1, True),
}
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
# The gate's exit code per outcome; 2 is an error (the gate could not run).
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}
# What a rule judged inconclusive makes of the gate: "fail" (the safe default: the gate's outcome
# is inconclusive, exit 3), "warn" (it passes, with a warning) or "pass".
INCONCLUSIVE_POLICIES = ("fail", "warn", "pass")
# The share of a task's evaluation examples that may share an n-gram with the candidate's
# training data: beyond a stray common phrase, the score measures recall, not skill.
MAX_CONTAMINATED = 0.01
SPEC_KEYS = ("alpha", "n_resamples", "seed", "inconclusive", "rules")
RULE_KEYS = {
    "metric": ("type", "metric", "task", "require_significance", *DIRECTIONS),
    "bias": ("type", "metric", "task", "group_by", "center"),
    "contamination": ("type", "max_share"),
}


@dataclass(frozen=True)
class Rule:
    metric: str
    type: str = "metric"
    task: str | None = None
    limit: str = ""  # one of DIRECTIONS, for metric rules
    threshold: float = 0.0
    require_significance: bool = True
    group_by: str = "category"  # bias rules
    center: float = 0.5  # bias rules

    def describe(self) -> str:
        where = f"{self.task}/" if self.task else ""
        if self.type == "contamination":
            return (
                f"at most {self.threshold:.1%} of a task's examples may share a {NGRAM}-gram "
                "with the candidate's training data"
            )
        if self.type == "bias":
            return (
                f"{where}{self.metric}: no {self.group_by} further from {self.center} "
                "than in the baseline"
            )
        unit = (
            f"{self.threshold:.1%} relative" if "relative" in self.limit else f"{self.threshold:g}"
        )
        verb = "rise" if DIRECTIONS[self.limit][0] > 0 else "drop"
        return f"{where}{self.metric} may not {verb} by more than {unit}"


@dataclass(frozen=True)
class GateSpec:
    rules: list[Rule]
    alpha: float = ALPHA
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    definition: dict = field(default_factory=dict)
    inconclusive: str = "fail"  # one of INCONCLUSIVE_POLICIES


def _threshold(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EvalkitError(f"{where}: {value!r} is not a finite number", hint="e.g. 0.02")
    return float(value)


def load_spec(path: str | Path) -> GateSpec:
    path = Path(path)
    definition = read_toml(path, "gate spec")
    check_keys(definition, SPEC_KEYS, what="key", where=f"gate spec {path}")
    rules = []
    specs = definition.get("rules", [])
    if not isinstance(specs, list) or not all(isinstance(r, dict) for r in specs):
        raise EvalkitError(f"gate spec {path}: rules must be [[rules]] tables")
    for i, raw in enumerate(specs, start=1):
        kind = raw.get("type", "metric")
        where = f"gate spec {path}, rule {i}"
        if not isinstance(kind, str) or kind not in RULE_KEYS:  # a TOML value may be a list
            raise unknown_name("rule type", kind, RULE_KEYS, where=where)
        check_keys(raw, RULE_KEYS[kind], what="key", where=where)
        if kind == "contamination":
            rules.append(_contamination_rule(raw.get("max_share", MAX_CONTAMINATED), where))
        elif kind == "bias":
            rules.append(
                Rule(
                    raw.get("metric", "stereo_preferred_shared"),
                    "bias",
                    raw.get("task", "bias"),
                    group_by=raw.get("group_by", "category"),
                    center=_threshold(raw.get("center", 0.5), f"{where}, center"),
                )
            )
        else:
            if "metric" not in raw:
                raise EvalkitError(f"{where}: no metric named")
            limits = [k for k in DIRECTIONS if k in raw]
            if len(limits) != 1:
                raise EvalkitError(
                    f"{where} ({raw['metric']}): give exactly one of {', '.join(DIRECTIONS)}"
                )
            rules.append(
                Rule(
                    raw["metric"],
                    task=raw.get("task"),
                    limit=limits[0],
                    threshold=_threshold(raw[limits[0]], f"{where}, {limits[0]}"),
                    require_significance=bool(raw.get("require_significance", True)),
                )
            )
    if not rules:
        raise EvalkitError(f"gate spec {path} has no [[rules]]")
    if not any(r.type == "contamination" for r in rules):  # on unless the spec sets its own
        rules.append(_contamination_rule(MAX_CONTAMINATED, f"gate spec {path}"))
    policy = definition.get("inconclusive", "fail")
    if not isinstance(policy, str) or policy not in INCONCLUSIVE_POLICIES:
        raise EvalkitError(
            f"gate spec {path}: inconclusive = {policy!r} is not a policy",
            hint=f"use one of {', '.join(map(repr, INCONCLUSIVE_POLICIES))}",
        )
    alpha = _threshold(definition.get("alpha", ALPHA), f"gate spec {path}, alpha")
    if not 0 < alpha < 0.5:
        raise EvalkitError(
            f"gate spec {path}: alpha {alpha} is not a significance level (e.g. 0.05)"
        )
    n_resamples, seed = definition.get("n_resamples", N_RESAMPLES), definition.get("seed", SEED)
    for key, value in (("n_resamples", n_resamples), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise EvalkitError(f"gate spec {path}: {key} {value!r} is not a whole number")
    if n_resamples < MIN_RESAMPLES:
        raise EvalkitError(f"gate spec {path}: n_resamples must be at least {MIN_RESAMPLES}")
    return GateSpec(rules, alpha, n_resamples, seed, definition, policy)


def _contamination_rule(max_share, where: str) -> Rule:
    share = _threshold(max_share, f"{where}, max_share")
    if not 0 <= share <= 1:
        raise EvalkitError(f"{where}: max_share {share} is not a share", hint="e.g. 0.01 (1%)")
    return Rule("contaminated", "contamination", threshold=share)
