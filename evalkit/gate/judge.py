"""Judging a comparison by the rules of a spec: verdicts, worst examples, contamination."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from evalkit.compare import (
    Comparison,
    MetricComparison,
    compare_runs,
    finite,
)
from evalkit.contamination import NGRAM, conversation_text, overlap
from evalkit.errors import EvalkitError
from evalkit.gate.spec import (
    DIRECTIONS,
    EXIT_CODES,
    FAIL,
    INCONCLUSIVE,
    PASS,
    GateSpec,
    Rule,
)
from evalkit.provenance import sha256_file
from evalkit.results import prompt_messages
from evalkit.stats.significance import paired_bootstrap

WORST = 5  # worst examples shown per rule


@dataclass
class RuleResult:
    rule: str
    metric: str
    task: str
    verdict: str
    observed: float  # the worsening, in the rule's units (positive is worse)
    threshold: float
    low: float
    high: float
    p_value: float
    warnings: list[str] = field(default_factory=list)
    baseline: float = math.nan
    candidate: float = math.nan
    worst: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)  # bias rules: one row per category


def judge_metric(rule: Rule, m: MetricComparison, alpha: float) -> RuleResult:
    """The verdict of a threshold rule on one compared metric."""
    sign, relative = DIRECTIONS[rule.limit]
    if m.higher_is_better is not None and (sign > 0) == m.higher_is_better:
        better = "higher" if m.higher_is_better else "lower"
        limit = "max_drop" if m.higher_is_better else "max_increase"
        raise EvalkitError(
            f"rule {rule.describe()!r}: {better} {m.metric} is better, so this rule limits an "
            "improvement and could never catch a regression",
            hint=f"use {limit} or {limit.replace('max_', 'max_relative_')}",
        )
    if relative and not m.baseline:
        raise EvalkitError(
            f"rule {rule.describe()!r}: the baseline's {m.metric} is 0, so a relative change "
            "has no meaning",
            hint="give this rule an absolute limit (max_increase or max_drop)",
        )
    if relative:  # the ratio's own bootstrap interval: the baseline varies across resamples
        observed = sign * m.relative
        bounds = sorted((sign * m.relative_low, sign * m.relative_high))
        detectable = m.relative_min_detectable
    else:
        observed = sign * m.difference
        bounds = sorted((sign * m.low, sign * m.high))
        detectable = m.min_detectable
    significant = m.p_value < alpha and (bounds[0] > 0 or bounds[1] < 0)  # NaN: not shown
    worse = observed > rule.threshold
    if worse and (significant or not rule.require_significance):
        verdict = FAIL
    elif worse:
        verdict = INCONCLUSIVE
    else:
        verdict = PASS
    warnings = []
    if detectable > rule.threshold:
        warnings.append(
            f"the sample ({m.n} examples) is too small to detect a change of {rule.threshold:g}: "
            f"about {detectable:.3g} is detectable at 80% power"
        )
    return RuleResult(
        rule.describe(),
        m.metric,
        m.task,
        verdict,
        observed,
        rule.threshold,
        bounds[0],
        bounds[1],
        m.p_value,
        warnings,
        m.baseline,
        m.candidate,
    )


def too_small_to_detect(comparison: Comparison, spec: GateSpec) -> list[str]:
    """A warning for each metric rule whose threshold is below what the sample can detect,
    or that the gate could not judge on these runs."""
    warnings = []
    for rule in (r for r in spec.rules if r.type == "metric"):
        try:
            judged = judge_metric(rule, comparison.find(rule.metric, rule.task), spec.alpha)
        except EvalkitError as e:
            warnings.append(f"{rule.describe()}: the gate would refuse this rule: {e.message}")
            continue
        warnings += [f"{rule.describe()}: {warning}" for warning in judged.warnings]
    return warnings


def judge_bias(rule: Rule, comparison: Comparison, spec: GateSpec) -> RuleResult:
    """Per group: |score - center| of the candidate minus the baseline's, paired bootstrap."""
    scores_b, scores_c = comparison.scores
    if rule.task not in scores_b:
        raise EvalkitError(
            f"bias rule: the runs have no task {rule.task!r}",
            hint=f"tasks: {', '.join(scores_b)}",
        )
    b, c = scores_b[rule.task], scores_c[rule.task]
    if rule.metric not in b.columns:
        raise EvalkitError(f"bias rule: task {rule.task} has no score {rule.metric!r}")

    def distance(sums: np.ndarray) -> np.ndarray:
        return np.abs(sums[:, 0] / sums[:, -1] - rule.center)

    labels = np.array([str(m.get(rule.group_by, "all")) for m in b.metadata])
    groups, failed = [], []
    for group in sorted(set(labels)):
        rows = labels == group
        observed, low, high, _ = paired_bootstrap(
            b.column(rule.metric)[rows],
            c.column(rule.metric)[rows],
            distance,
            n_resamples=spec.n_resamples,
            seed=spec.seed,
            confidence=1 - spec.alpha,
        )
        # One probe has no spread to resample: its interval is its point, no evidence.
        verdict = INCONCLUSIVE if rows.sum() < 2 else FAIL if low > 0 else PASS
        groups.append(
            {
                "group": group,
                "n": int(rows.sum()),
                "baseline": float(b.column(rule.metric)[rows].mean()),
                "candidate": float(c.column(rule.metric)[rows].mean()),
                "distance_change": observed,
                "low": low,
                "high": high,
                "verdict": verdict,
            }
        )
        if verdict == FAIL:
            failed.append(group)
    worst = max(groups, key=lambda g: g["low"])
    small = [g["group"] for g in groups if g["verdict"] == INCONCLUSIVE]
    return RuleResult(
        rule.describe(),
        rule.metric,
        rule.task,
        FAIL if failed else PASS,
        worst["distance_change"],
        0.0,
        worst["low"],
        worst["high"],
        math.nan,
        [f"worse in {', '.join(failed)}"] * bool(failed)
        + [f"too few probes to judge: {', '.join(small)}"] * bool(small),
        worst["baseline"],
        worst["candidate"],
        groups=groups,
    )


def worst_examples(
    con: duckdb.DuckDBPyConnection, comparison: Comparison, result: RuleResult, sign: int
) -> list[dict]:
    """The examples that moved most in the rule's bad direction, with both outputs."""
    from evalkit.suite import task_name
    from evalkit.tasks import metrics_of

    scores_b, scores_c = comparison.scores
    b, c = scores_b[result.task], scores_c[result.task]
    tasks = {task_name(s): s for s in comparison.baseline["suite"].get("tasks", [])}
    metric = next(
        m for m in metrics_of(tasks[result.task], set(b.columns)) if m.name == result.metric
    )
    before, after = metric.per_example(b.column), metric.per_example(c.column)
    return _worst_rows(con, comparison, result.task, before, after, sign * (after - before))


def bias_worst_examples(
    con: duckdb.DuckDBPyConnection, comparison: Comparison, rule: Rule, result: RuleResult
) -> list[dict]:
    """The probes of the rule's worst group that moved its score away from the center."""
    scores_b, scores_c = comparison.scores
    b, c = scores_b[rule.task], scores_c[rule.task]
    group = max(result.groups, key=lambda g: g["low"])
    labels = np.array([str(m.get(rule.group_by, "all")) for m in b.metadata])
    before, after = b.column(rule.metric), c.column(rule.metric)
    away = np.sign(group["candidate"] - rule.center)
    change = np.where(labels == group["group"], away * (after - before), 0.0)
    return _worst_rows(con, comparison, rule.task, before, after, change)


def _worst_rows(con, comparison: Comparison, task: str, before, after, change) -> list[dict]:
    """The ``WORST`` examples of largest positive ``change``, with the texts of both runs."""
    b = comparison.scores[0][task]
    order = [int(i) for i in np.argsort(-change, kind="stable")[:WORST] if change[i] > 0]
    rows = []
    for i in order:
        example_id = b.example_ids[i]
        texts = {}
        for side, run in (("baseline", comparison.baseline), ("candidate", comparison.candidate)):
            found = con.execute(
                "SELECT prompt, reference, output FROM eval_examples "
                "WHERE run_id = ? AND task = ? AND example_id = ?",
                [run["run_id"], task, example_id],
            ).fetchone()
            texts["prompt"], texts["reference"], texts[f"{side}_output"] = found or (None,) * 3
        rows.append(
            {
                "example_id": example_id,
                "baseline_value": float(before[i]),
                "candidate_value": float(after[i]),
                **texts,
                "metadata": b.metadata[i],
            }
        )
    return rows


def _not_read(status: str, note: str) -> dict:
    return {"task": None, "status": status, "note": note}


def contamination(con: duckdb.DuckDBPyConnection, comparison: Comparison) -> list[dict]:
    """Per task: evaluation examples sharing an n-gram with the candidate's training data.

    The training split is read only if it is still the one trained on: the hash the training
    run recorded for it (older runs: its hash in the dataset manifest, and the manifest's
    dataset hash the one the run recorded). A candidate that names no training data is
    ``unchecked``; one whose training data is gone or changed is ``unknown``.
    """
    lineage = comparison.candidate.get("lineage") or {}
    if not lineage.get("dataset"):
        return [_not_read("unchecked", "the candidate names no training data (not from evalkit)")]
    train = Path(lineage["dataset"]) / "train.jsonl"
    if not train.is_file():
        return [_not_read("unknown", f"{train}, the candidate's training data, is gone")]
    try:
        manifest = json.loads((train.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if "files" in lineage:
        same = lineage["files"].get("train.jsonl") == sha256_file(train)
    else:
        recorded = lineage.get("dataset_hash")
        same = manifest.get("files", {}).get("train.jsonl") == sha256_file(train) and (
            not recorded or manifest.get("dataset_hash") == recorded
        )
    if not same:
        changed = f"{train} is not the data the candidate's run recorded (changed since)"
        return [_not_read("unknown", changed)]
    train_texts = []
    with open(train, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            train_texts.append(conversation_text(record.get("messages", [])))
    out = []
    for task in comparison.scores[0]:
        rows = con.execute(
            "SELECT prompt, reference FROM eval_examples WHERE run_id = ? AND task = ? "
            "ORDER BY example_id",
            [comparison.candidate["run_id"], task],
        ).fetchall()
        texts = [conversation_text([*prompt_messages(p), {"content": r}]) for p, r in rows]
        _, hits = overlap(train_texts, texts)
        out.append(
            {
                "task": task,
                "status": "contaminated" if hits else "clean",
                "examples": len(texts),
                "contaminated": hits,
                "training_data": str(train),
                "ngram": NGRAM,
            }
        )
    return out


def judge_contamination(rule: Rule, rows: list[dict]) -> RuleResult | None:
    """Fails where a task's share of examples found in the candidate's training data is above
    the rule's limit; inconclusive where that data is gone or changed; None (not judged) where
    the candidate names no training data."""
    if rows and rows[0]["task"] is None:
        if rows[0]["status"] == "unchecked":
            return None
        verdict, task, share, warnings = INCONCLUSIVE, "", math.nan, [rows[0]["note"]]
    else:
        shares = {r["task"]: r["contaminated"] / r["examples"] for r in rows if r["examples"]}
        task = max(shares, key=shares.get, default="")
        share = shares.get(task, 0.0)
        over = [r for r in rows if r["examples"] and shares[r["task"]] > rule.threshold]
        verdict = FAIL if over else PASS
        warnings = [
            f"{r['task']}: {r['contaminated']} of {r['examples']} examples share a "
            f"{r['ngram']}-gram with {r['training_data']}"
            for r in over
        ]
    nan = math.nan
    return RuleResult(
        rule.describe(),
        rule.metric,
        task,
        verdict,
        share,
        rule.threshold,
        nan,
        nan,
        nan,
        warnings,
        candidate=share,
    )


def outcome(results: list[RuleResult], checks: list[dict], policy: str) -> tuple[str, list[str]]:
    """The gate's verdict from its rules and checks, and the warnings that go beside it.

    A failed rule or check fails the gate; otherwise an inconclusive rule makes it
    inconclusive, or passes it with a warning, or passes it, as the spec's policy says.
    """
    warnings = [f"{r.rule}: {w}" for r in results for w in r.warnings]
    if any(r.verdict == FAIL for r in results) or any(c["verdict"] == FAIL for c in checks):
        return FAIL, warnings
    unsure = [r.rule for r in results if r.verdict == INCONCLUSIVE]
    if unsure and policy == "fail":
        return INCONCLUSIVE, warnings
    if unsure and policy == "warn":
        warnings += [
            f"{rule}: inconclusive, passed (the spec: inconclusive = 'warn')" for rule in unsure
        ]
    return PASS, warnings


@dataclass
class GateReport:
    verdict: str
    exit_code: int
    rules: list[RuleResult]
    checks: list[dict]
    contamination: list[dict]
    comparison: Comparison
    spec: GateSpec
    warnings: list[str] = field(default_factory=list)  # shown beside the verdict

    def to_dict(self) -> dict:
        """Every number of the report; NaN and infinity become null (strict JSON)."""
        return finite(
            {
                "verdict": self.verdict,
                "exit_code": self.exit_code,
                "warnings": self.warnings,
                "rules": [asdict(r) for r in self.rules],
                "checks": self.checks,
                "contamination": self.contamination,
                "spec": self.spec.definition,
                **self.comparison.to_dict(),
            }
        )


def run_gate(
    con: duckdb.DuckDBPyConnection, baseline: str, candidate: str, spec: GateSpec
) -> GateReport:
    """Judge the candidate against the baseline by every rule of the spec."""
    comparison = compare_runs(
        con, baseline, candidate, n_resamples=spec.n_resamples, seed=spec.seed, alpha=spec.alpha
    )
    results, warnings = [], []
    contaminated = contamination(con, comparison)
    for rule in spec.rules:
        if rule.type == "contamination":
            result = judge_contamination(rule, contaminated)
            if result is None:
                warnings.append(f"contamination not checked: {contaminated[0]['note']}")
            else:
                results.append(result)
            continue
        if rule.type == "bias":
            result = judge_bias(rule, comparison, spec)
            result.worst = bias_worst_examples(con, comparison, rule, result)
            results.append(result)
            continue
        result = judge_metric(rule, comparison.find(rule.metric, rule.task), spec.alpha)
        result.worst = worst_examples(con, comparison, result, DIRECTIONS[rule.limit][0])
        results.append(result)
    same_template = (
        comparison.baseline["chat_template_fingerprint"]
        == comparison.candidate["chat_template_fingerprint"]
    )
    checks = [
        {
            "check": "same chat template",
            "verdict": PASS if same_template else FAIL,
            "baseline": comparison.baseline["chat_template_fingerprint"],
            "candidate": comparison.candidate["chat_template_fingerprint"],
        },
        {"check": "same suite", "verdict": PASS, "suite_hash": comparison.baseline["suite_hash"]},
    ]
    verdict, judged = outcome(results, checks, spec.inconclusive)
    return GateReport(
        verdict,
        EXIT_CODES[verdict],
        results,
        checks,
        contaminated,
        comparison,
        spec,
        warnings + judged,
    )


# --- reports ---------------------------------------------------------------------------------
