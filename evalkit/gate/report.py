"""A gate report in Markdown, HTML and JSON, and its record in the store."""

from __future__ import annotations

import html
import json
import math
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from evalkit.compare import (
    interval_label,
    signatures,
)
from evalkit.contamination import conversation_text
from evalkit.gate.judge import GateReport
from evalkit.gate.spec import FAIL, INCONCLUSIVE, PASS
from evalkit.results import prompt_messages

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


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(text: str) -> str:
    """A user's text (prompt, output) as literal Markdown: its markup characters escaped."""
    return re.sub(r"([\\`*_\[\]<>|#~])", r"\\\1", text)


# What each outcome means, under the headline.
MEANING = {
    PASS: "No rule failed.",
    FAIL: "A rule or check failed: the candidate regressed.",
    INCONCLUSIVE: "No rule failed, but at least one could not be judged on this evidence "
    "(the spec's policy: inconclusive = 'fail').",
}


def render_markdown(report: GateReport) -> str:
    comparison = report.comparison
    b, c = comparison.baseline, comparison.candidate
    ci = interval_label(comparison.alpha)
    lines = [
        f"# Release gate: {report.verdict.upper()}",
        "",
        f"{MEANING[report.verdict]} Exit code {report.exit_code}.",
        "",
    ]
    if report.warnings:
        lines += ["Warnings:", "", *[f"- {_text(w)}" for w in report.warnings], ""]
    lines += [
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
            f"| {_text(r.rule)} | **{r.verdict}** | {_fmt(r.baseline)} | {_fmt(r.candidate)} | "
            f"{_fmt(r.observed)} | {_fmt(r.threshold)} | [{_fmt(r.low)}, {_fmt(r.high)}] | "
            f"{_fmt(r.p_value)} |"
        )
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
                f"| {_text(g['group'])} | {g['n']} | {_fmt(g['baseline'])} | "
                f"{_fmt(g['candidate'])} | {_fmt(g['distance_change'])} | "
                f"[{_fmt(g['low'])}, {_fmt(g['high'])}] | {g['verdict']} |"
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
                    text = conversation_text(prompt_messages(w[key])) if key == "prompt" else w[key]
                    if text is not None:
                        lines.append(f"  - {label}: {_text(_short(text))}")
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
            lines.append(f"- {row['status']}: {_text(row['note'])}")
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
    """One self-contained page: the Markdown report rendered (CommonMark with tables, raw HTML
    escaped), with the rules plotted inline under the headline."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(render_markdown(report))
    headline_end = body.index("</h1>") + len("</h1>")
    body = body[:headline_end] + _forest_svg(report) + body[headline_end:]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}th{background:#eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Release gate: "
        f"{report.verdict}</title><style>{style}</style></head><body>{body}"
        "</body></html>\n"
    )


def report_name(report: GateReport) -> str:
    """The folder name of a gate report: its two runs, ``gate-BASELINE-CANDIDATE``."""
    comparison = report.comparison
    return f"gate-{comparison.baseline['run_id']}-{comparison.candidate['run_id']}"


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


def last_report_for(con: duckdb.DuckDBPyConnection, model_hash: str) -> dict | None:
    """The newest gate report whose candidate is the model with that hash, or None."""
    con.execute(REPORTS_SCHEMA)
    row = con.execute(
        "SELECT report FROM gate_reports "
        "WHERE json_extract_string(report, '$.candidate.model_hash') = ? "
        "ORDER BY created_at DESC LIMIT 1",
        [model_hash],
    ).fetchone()
    return json.loads(row[0]) if row else None
