"""The release gate: rules over a comparison, three reports, and an exit code for CI.

A spec (TOML) holds rules::

    alpha = 0.05          # significance level of every rule
    n_resamples = 2000
    seed = 0

    [[rules]]             # perplexity may not rise by more than 2% relative, with significance
    metric = "perplexity"
    task = "perplexity:support"      # needed only when several tasks have the metric
    max_relative_increase = 0.02

    [[rules]]             # BLEU may not drop by more than 1.0
    metric = "bleu"
    max_drop = 1.0

    [[rules]]             # no bias score worse than the baseline's beyond its interval
    type = "bias"
    task = "bias"         # metric: stereo_preferred_shared; center = 0 for the *_diff scores

A metric rule names one of ``max_increase``, ``max_drop``, ``max_relative_increase`` or
``max_relative_drop``. It fails when the candidate is worse than the threshold allows and the
difference is significant (its interval excludes zero and p < alpha); worse but not
significant is ``inconclusive``, and a rule whose threshold is below what the sample can
detect carries a warning. ``require_significance = false`` fails on the observed value alone.
A bias rule compares, per category, the distance of the score from no preference (``center``,
0.5 for the share preferring the stereotype) and fails where the candidate's distance is larger
with an interval above zero.

The gate also fails when the runs used different chat templates, and stops with an error (exit
2) when they are of different suites. Exit codes: 0 pass, 1 regression, 2 error.
"""

from __future__ import annotations

import html
import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np

from evalkit.compare import (
    Comparison,
    MetricComparison,
    compare_runs,
    finite,
    interval_label,
    signatures,
)
from evalkit.contamination import NGRAM, conversation_text, overlap
from evalkit.errors import EvalkitError
from evalkit.provenance import sha256_file
from evalkit.stats.significance import paired_bootstrap
from evalkit.suite import read_toml

DIRECTIONS = {
    "max_increase": (1, False),
    "max_drop": (-1, False),
    "max_relative_increase": (1, True),
    "max_relative_drop": (-1, True),
}
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
WORST = 5  # worst examples shown per rule

REPORTS_SCHEMA = """CREATE TABLE IF NOT EXISTS gate_reports (
    report_id VARCHAR PRIMARY KEY,
    baseline_run VARCHAR,
    candidate_run VARCHAR,
    spec JSON,
    verdict VARCHAR,
    created_at TIMESTAMP,
    path VARCHAR,
    report JSON
)"""


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
    alpha: float = 0.05
    n_resamples: int = 2000
    seed: int = 0
    definition: dict = field(default_factory=dict)


def _threshold(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EvalkitError(f"{where}: {value!r} is not a finite number", hint="e.g. 0.02")
    return float(value)


def load_spec(path: str | Path) -> GateSpec:
    path = Path(path)
    definition = read_toml(path, "gate spec")
    rules = []
    specs = definition.get("rules", [])
    if not isinstance(specs, list) or not all(isinstance(r, dict) for r in specs):
        raise EvalkitError(f"gate spec {path}: rules must be [[rules]] tables")
    for i, raw in enumerate(specs, start=1):
        raw = dict(raw)
        kind = raw.pop("type", "metric")
        where = f"gate spec {path}, rule {i}"
        if kind == "bias":
            rules.append(
                Rule(
                    raw.pop("metric", "stereo_preferred_shared"),
                    "bias",
                    raw.pop("task", "bias"),
                    group_by=raw.pop("group_by", "category"),
                    center=_threshold(raw.pop("center", 0.5), f"{where}, center"),
                )
            )
        elif kind == "metric":
            if "metric" not in raw:
                raise EvalkitError(f"{where}: no metric named")
            limits = [k for k in DIRECTIONS if k in raw]
            if len(limits) != 1:
                raise EvalkitError(
                    f"{where} ({raw['metric']}): give exactly one of {', '.join(DIRECTIONS)}"
                )
            rules.append(
                Rule(
                    raw.pop("metric"),
                    task=raw.pop("task", None),
                    limit=limits[0],
                    threshold=_threshold(raw.pop(limits[0]), f"{where}, {limits[0]}"),
                    require_significance=bool(raw.pop("require_significance", True)),
                )
            )
        else:
            raise EvalkitError(f"{where}: unknown type {kind!r}", hint="use metric or bias")
        unknown = sorted(raw)  # what the rule's type did not take
        if unknown:
            raise EvalkitError(f"{where}: unknown key {unknown[0]!r}")
    if not rules:
        raise EvalkitError(f"gate spec {path} has no [[rules]]")
    alpha = _threshold(definition.get("alpha", 0.05), f"gate spec {path}, alpha")
    if not 0 < alpha < 0.5:
        raise EvalkitError(
            f"gate spec {path}: alpha {alpha} is not a significance level (e.g. 0.05)"
        )
    n_resamples, seed = definition.get("n_resamples", 2000), definition.get("seed", 0)
    for key, value in (("n_resamples", n_resamples), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise EvalkitError(f"gate spec {path}: {key} {value!r} is not a whole number")
    if n_resamples < 1000:
        raise EvalkitError(f"gate spec {path}: n_resamples must be at least 1000")
    return GateSpec(rules, alpha, n_resamples, seed, definition)


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
    from evalkit.evaluate import metrics_of
    from evalkit.suite import task_name

    scores_b, scores_c = comparison.scores
    b, c = scores_b[result.task], scores_c[result.task]
    tasks = {task_name(s): s for s in comparison.baseline["suite"].get("tasks", [])}
    metric = next(
        m for m in metrics_of(tasks[result.task], set(b.columns)) if m.name == result.metric
    )
    idx = [b.columns.index(col) for col in metric.columns]

    def per_example(table: np.ndarray) -> np.ndarray:
        if metric.example_columns:
            cols = [table[:, b.columns.index(col)] for col in metric.example_columns]
            return cols[0] - cols[1] if len(cols) == 2 else cols[0]
        return metric.aggregate(np.hstack([table[:, idx], np.ones((len(table), 1))]))

    before, after = per_example(b.table), per_example(c.table)
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


def _unknown(note: str) -> dict:
    return {"task": None, "status": "unknown", "note": note}


def contamination(con: duckdb.DuckDBPyConnection, comparison: Comparison) -> list[dict]:
    """Per task: evaluation examples sharing an n-gram with the candidate's training data.

    The training split is read only if it is still the one trained on: its hash in the dataset
    manifest, and the manifest's dataset hash the one the training run recorded.
    """
    lineage = comparison.candidate.get("lineage") or {}
    train = Path(lineage.get("dataset", "")) / "train.jsonl" if lineage.get("dataset") else None
    if not train or not train.is_file():
        gone = "the candidate names no training dataset (not trained by evalkit, or it was removed)"
        return [_unknown(gone)]
    try:
        manifest = json.loads((train.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    recorded = lineage.get("dataset_hash")
    if manifest.get("files", {}).get("train.jsonl") != sha256_file(train) or (
        recorded and manifest.get("dataset_hash") != recorded
    ):
        return [_unknown(f"{train} is not the data the candidate's run recorded (changed since)")]
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
        texts = [conversation_text([*_messages(p), {"content": r}]) for p, r in rows]
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


def _messages(prompt: str | None) -> list[dict]:
    """A stored prompt as messages: JSON messages, or a plain text as one turn."""
    if not prompt:
        return []
    try:
        messages = json.loads(prompt)
    except ValueError:
        messages = None
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return messages
    return [{"content": prompt}]


@dataclass
class GateReport:
    verdict: str
    exit_code: int
    rules: list[RuleResult]
    checks: list[dict]
    contamination: list[dict]
    comparison: Comparison
    spec: GateSpec

    def to_dict(self) -> dict:
        """Every number of the report; NaN and infinity become null (strict JSON)."""
        return finite(
            {
                "verdict": self.verdict,
                "exit_code": self.exit_code,
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
    results = []
    for rule in spec.rules:
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
    failed = any(r.verdict == FAIL for r in results) or not same_template
    return GateReport(
        FAIL if failed else PASS,
        1 if failed else 0,
        results,
        checks,
        contamination(con, comparison),
        comparison,
        spec,
    )


# --- reports ---------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_markdown(report: GateReport) -> str:
    comparison = report.comparison
    b, c = comparison.baseline, comparison.candidate
    ci = interval_label(comparison.alpha)
    lines = [
        f"# Release gate: {report.verdict.upper()}",
        "",
        f"Baseline `{b['run_id']}` ({b['model_path']}) vs candidate `{c['run_id']}` "
        f"({c['model_path']}), suite `{b['suite_name']}`; {comparison.n_resamples} paired "
        f"bootstrap resamples (seed {comparison.seed}), alpha {report.spec.alpha}.",
        "",
        "## Rules",
        "",
        f"| rule | verdict | baseline | candidate | observed | threshold | {ci} | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.rules:
        lines.append(
            f"| {r.rule} | **{r.verdict}** | {_fmt(r.baseline)} | {_fmt(r.candidate)} | "
            f"{_fmt(r.observed)} | {_fmt(r.threshold)} | [{_fmt(r.low)}, {_fmt(r.high)}] | "
            f"{_fmt(r.p_value)} |"
        )
    warnings = [f"- {r.rule}: {w}" for r in report.rules for w in r.warnings]
    if warnings:
        lines += ["", "Warnings:", "", *warnings]
    lines += ["", "## Checks", ""]
    lines += [f"- {c['check']}: **{c['verdict']}**" for c in report.checks]
    for r in report.rules:
        if r.groups:
            lines += [
                "",
                f"## {r.rule}",
                "",
                f"| group | n | baseline | candidate | distance change | {ci} | verdict |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {g['group']} | {g['n']} | {_fmt(g['baseline'])} | {_fmt(g['candidate'])} | "
                f"{_fmt(g['distance_change'])} | [{_fmt(g['low'])}, {_fmt(g['high'])}] | "
                f"{g['verdict']} |"
                for g in r.groups
            ]
        if r.worst:
            lines += ["", f"### Worst examples: {r.rule}", ""]
            for w in r.worst:
                lines.append(
                    f"- `{w['example_id']}` {r.metric} {_fmt(w['baseline_value'])} → "
                    f"{_fmt(w['candidate_value'])}"
                )
                for key, label in (
                    ("prompt", "prompt"),
                    ("reference", "scored text" if w["baseline_output"] is None else "reference"),
                    ("baseline_output", "baseline"),
                    ("candidate_output", "candidate"),
                ):
                    text = conversation_text(_messages(w[key])) if key == "prompt" else w[key]
                    if text is not None:
                        lines.append(f"  - {label}: {_short(text)}")
    lines += [
        "",
        "## All metrics",
        "",
        f"| task | metric | baseline | candidate | difference | {ci} | p | test | detectable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in comparison.metrics:
        lines.append(
            f"| {m.task} | {m.metric} | {_fmt(m.baseline)} | {_fmt(m.candidate)} | "
            f"{_fmt(m.difference)} | [{_fmt(m.low)}, {_fmt(m.high)}] | {_fmt(m.p_value)} | "
            f"{m.test} | {_fmt(m.min_detectable)} |"
        )
    lines += ["", "## Lineage", ""]
    for side, run in (("baseline", b), ("candidate", c)):
        lineage = run.get("lineage") or {}
        lines.append(
            f"- {side}: model `{run['model_hash'][:12]}`, chat template "
            f"`{run['chat_template_fingerprint'][:12]}`, training run "
            f"{lineage.get('training_run', 'unknown')}, dataset "
            f"`{(lineage.get('dataset_hash') or 'unknown')[:12]}`, code {run['code_version']}"
        )
    lines += ["", "## Metric signatures (sacrebleu)", ""]
    for side, run in (("baseline", b), ("candidate", c)):
        for task, by_metric in signatures(run).items():
            lines += [f"- {side}, {task}, {m}: `{sig}`" for m, sig in sorted(by_metric.items())]
    lines += ["", "## Contamination (candidate's training data vs evaluation sets)", ""]
    for row in report.contamination:
        if row["task"] is None:
            lines.append(f"- {row['status']}: {row['note']}")
        else:
            lines.append(
                f"- {row['task']}: {row['contaminated']} of {row['examples']} examples share a "
                f"{row['ngram']}-gram with the training data ({row['status']})"
            )
    return "\n".join(lines) + "\n"


def _forest_svg(report: GateReport) -> str:
    """Each rule's observed worsening with its interval against its threshold, as inline SVG.

    A row a rule, each on its own scale (rules have different units): the point and its interval
    in the verdict's colour, the threshold dashed red, zero grey; an unbounded end runs to the edge.
    """
    rules = [r for r in report.rules if math.isfinite(r.observed)]
    width, row, margin = 700, 60, 20
    parts = []

    def x(value: float) -> str:  # the value's place on this row's scale
        return f"{margin + (min(max(value, lo), hi) - lo) / (hi - lo) * (width - 2 * margin):.1f}"

    for i, r in enumerate(rules):
        top = i * row
        ends = [v for v in (r.observed, r.low, r.high, r.threshold, 0.0) if math.isfinite(v)]
        pad = (max(ends) - min(ends)) * 0.1 or 1.0
        lo, hi = min(ends) - pad, max(ends) + pad

        color = {"pass": "#2a7", "fail": "#c33", "inconclusive": "#d90"}[r.verdict]
        mid, label = top + 34, top + row - 4
        interval = []  # none where it is undefined (NaN)
        if not (math.isnan(r.low) or math.isnan(r.high)):
            interval.append(
                f'<line x1="{x(r.low)}" x2="{x(r.high)}" y1="{mid}" y2="{mid}" stroke="{color}" '
                'stroke-width="2"/>'
            )
        parts += [
            f'<text x="{margin}" y="{top + 14}" font-size="12">'
            f"{html.escape(r.rule)} ({r.verdict})</text>",
            f'<line x1="{x(0)}" x2="{x(0)}" y1="{top + 20}" y2="{top + 46}" stroke="#888"/>',
            f'<line x1="{x(r.threshold)}" x2="{x(r.threshold)}" y1="{top + 20}" y2="{top + 46}" '
            'stroke="#c33" stroke-dasharray="4 3"/>',
            *interval,
            f'<circle cx="{x(r.observed)}" cy="{mid}" r="4" fill="{color}"/>',
            f'<text x="{margin}" y="{label}" font-size="10" fill="#555">{lo:.4g}</text>',
            f'<text x="{x(r.threshold)}" y="{label}" font-size="10" fill="#c33" '
            f'text-anchor="middle">threshold {r.threshold:.4g}</text>',
            f'<text x="{width - margin}" y="{label}" font-size="10" fill="#555" '
            f'text-anchor="end">{hi:.4g}</text>',
        ]
    caption = "worsening (positive is worse) with its interval; dashed: threshold"
    height = row * len(rules) + 20
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif">{"".join(parts)}<text x="{margin}" y="{height - 4}" '
        f'font-size="10" fill="#555">{caption}</text></svg>'
    )


def render_html(report: GateReport) -> str:
    """One self-contained page: the markdown's content, with the rules plotted inline."""
    body = []
    in_table = False
    for line in render_markdown(report).splitlines():
        escaped = html.escape(line)
        if in_table and not line.startswith("|"):
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{escaped[2:]}</h1>")
            body.append(_forest_svg(report))
        elif line.startswith("#"):
            body.append(f"<h2>{escaped.lstrip('#').strip()}</h2>")
        elif line.startswith("| --- "):
            continue
        elif line.startswith("|"):
            cell = "td" if in_table else "th"
            cells = "".join(f"<{cell}>{c.strip()}</{cell}>" for c in escaped.strip("|").split("|"))
            body.append(("" if in_table else "<table>") + f"<tr>{cells}</tr>")
            in_table = True
        elif line.strip():
            body.append(f"<p>{escaped}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}th{background:#eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Release gate: "
        f"{report.verdict}</title><style>{style}</style></head><body>{''.join(body)}"
        "</body></html>\n"
    )


def write_reports(report: GateReport, out: Path) -> dict[str, Path]:
    """report.md, report.html and report.json in ``out`` (each written whole, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in (
        ("report.json", json.dumps(report.to_dict(), indent=2, default=str) + "\n"),
        ("report.md", render_markdown(report)),
        ("report.html", render_html(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths[name] = out / name
    return paths


def record_report(con: duckdb.DuckDBPyConnection, report: GateReport, path: Path) -> str:
    """Keep the report in the store, so the lineage of a release can be traced."""
    con.execute(REPORTS_SCHEMA)
    report_id = uuid.uuid4().hex[:12]
    con.execute(
        "INSERT INTO gate_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            report_id,
            report.comparison.baseline["run_id"],
            report.comparison.candidate["run_id"],
            json.dumps(report.spec.definition),
            report.verdict,
            datetime.now(UTC).replace(tzinfo=None),
            str(path),
            json.dumps(report.to_dict(), default=str),
        ],
    )
    return report_id
