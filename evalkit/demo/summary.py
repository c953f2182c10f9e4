"""Step 13: the run's claims checked on its own figures, and the summary printed: what changed
with intervals, what v1 learned, the drift alerts, the reports, the lineage of v2."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evalkit.demo.serving import Traffic
from evalkit.workspace import Workspace


@dataclass
class Summary:
    """What the run showed: the claims checked, the figures behind them, where things are."""

    claims: dict[str, bool]
    figures: dict[str, float | int | str | None]
    reports: dict[str, str]  # gate -> the folder of its report.md, .html and .json
    alerting: str  # with a real Prometheus and Alertmanager, or without (and why)
    seconds: dict[str, float] = field(default_factory=dict)  # per step

    @property
    def fingerprint(self) -> str:
        """A hash of the figures that do not depend on timing: equal on a second run."""
        stable = {k: v for k, v in self.figures.items() if not k.startswith("drift_")}
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self) | {"fingerprint": self.fingerprint}


TABLE_METRICS = ("perplexity", "bleu", "chrf", "bleu_margin", "chrf_margin")


def _table(title: str, comparison) -> list[str]:
    lines = [title, f"  {'task':<22} {'metric':<12} {'before':>9} {'after':>9} {'change':>9} "
             f"{'95% CI':>22} {'p':>7}  note"]  # fmt: skip
    for m in comparison.metrics:
        if m.metric in TABLE_METRICS:
            ci = f"[{m.low:.4g}, {m.high:.4g}]"
            lines.append(
                f"  {m.task:<22} {m.metric:<12} {m.baseline:>9.4g} {m.candidate:>9.4g} "
                f"{m.difference:>+9.4g} {ci:>22} {m.p_value:>7.3g}  {m.note()}"
            )
    return lines


def _lineage(ws: Workspace, model: Path) -> str:
    from evalkit.lineage import build_graph, find, render, trace

    graph = build_graph(ws, also=[str(model)])
    return render(trace(graph, find(graph, str(model)), limit=3))


def summarize(ws: Workspace, gates: dict, drift: dict, traffic: Traffic, note: str) -> Summary:
    """The claims of the run, checked on its own figures."""
    first, second = gates["v1"][0].comparison, gates["v2"][0].comparison
    support_v1 = first.find("perplexity", "perplexity:support")
    support_v2 = second.find("perplexity", "perplexity:support")
    topics_v2 = second.find("perplexity", "perplexity:topics")
    support_rule = next(r for r in gates["v2"][0].rules if r.task == "perplexity:support")
    alerts = [at for _, at in drift["alerts"]]
    episode = traffic.ended - traffic.drift_started
    claims = {
        "v1 beats the base on held-out support (perplexity, significant)": support_v1.significant
        and support_v1.candidate_better is True,
        "the drift alert fires during the episode": any(0 <= at <= episode for at in alerts),
        "no drift alert before the episode": drift["calm_passes"] > 0
        and min(alerts, default=0) >= 0,
        "v2 beats v1 on the drifted topics (perplexity, significant)": topics_v2.significant
        and topics_v2.candidate_better is True,
        "v2 keeps support within the gate's tolerance": support_rule.verdict == "pass",
    }
    figures: dict = {}
    if "prometheus_fired" in drift:
        fired = drift["prometheus_fired"]
        claims["Prometheus fires the drift alert during the episode, not before"] = (
            fired is not None and traffic.drift_started <= fired
        )
        claims["the alert reaches Alertmanager"] = drift["alertmanager_received"] > 0
        if fired is not None:
            figures["drift_prometheus_after_onset_s"] = round(fired - traffic.drift_started, 1)
    for label, m in (
        ("v1_support", support_v1),
        ("v2_support", support_v2),
        ("v2_topics", topics_v2),
    ):
        for key, value in (
            ("before", m.baseline),
            ("after", m.candidate),
            ("low", m.low),
            ("high", m.high),
        ):
            figures[f"{label}_perplexity_{key}"] = round(value, 4)
    for metric in ("bleu", "chrf", "bleu_margin", "chrf_margin"):
        figures[f"v1_{metric}"] = round(first.find(metric).candidate, 4)
    figures["v1_gate"], figures["v2_gate"] = gates["v1"][0].verdict, gates["v2"][0].verdict
    figures["drift_alert_after_onset_s"] = round(min(alerts), 1) if alerts else None
    figures["drift_calm_passes"] = drift["calm_passes"]
    figures["drift_calm_passes_drifted"] = drift["calm_passes_drifted"]
    reports = {name: str(out) for name, (_, out) in gates.items()}
    return Summary(claims, figures, reports, note)


def _learned(figures: dict, parameters: int) -> list[str]:
    """What the model learned, said plainly from v1's figures."""
    chrf, margin = figures["v1_chrf"], figures["v1_chrf_margin"]
    closer = (
        "its answers are no closer to their own references than to others' (a margin under one "
        "chrF point): it does not learn to answer these questions"
        if abs(margin) < 1
        else f"its answers are {'closer to' if margin > 0 else 'further from'} their own "
        "references than to others'"
    )
    return [
        f"What a model of {parameters:,} parameters learns here: v1's chrF on held-out answers is "
        f"{chrf:.1f} (BLEU {figures['v1_bleu']:.2g}), {margin:+.2f} chrF and "
        f"{figures['v1_bleu_margin']:+.2g} BLEU over the content control (the same answers "
        "scored against other questions' references). It learns the domain's vocabulary and "
        f"style (its perplexity on held-out support answers falls), but {closer}.",
    ]


def print_summary(ws: Workspace, summary: Summary, gates: dict, base: Path, v2: Path) -> None:
    """The summary as the run ends: tables, what was learned, drift, claims, reports, lineage."""
    from textwrap import fill

    from finetune.base_model import read_metadata

    f = summary.figures
    first, second = gates["v1"][0].comparison, gates["v2"][0].comparison
    alert = f["drift_alert_after_onset_s"]
    drift = (
        f"Drift, monitored {summary.alerting}: the first drift alert "
        + (f"{alert:+.1f} s after the episode began" if alert is not None else "never came")
        + f"; {f['drift_calm_passes']} passes over the calm traffic before it, "
        f"{f['drift_calm_passes_drifted']} of them drifted."
    )
    if "drift_prometheus_after_onset_s" in f:
        drift += (
            f" Prometheus had EvalkitDriftDetected firing "
            f"{f['drift_prometheus_after_onset_s']:+.1f} s after the episode began."
        )
    lines = ["", "=" * 100, "SUMMARY", ""]
    lines += _table("v1 against the base model (held-out support questions):", first)
    lines += ["", *_table("v2 against v1 (support, drifted topics, regression set):", second)]
    lines += ["", fill(" ".join(_learned(f, read_metadata(base)["parameters"])), 100)]
    lines += ["", fill(drift, 100), "", "Claims:"]
    lines += [f"  [{'x' if ok else ' '}] {claim}" for claim, ok in summary.claims.items()]
    lines += ["", "Reports:"]
    lines += [
        f"  gate {name}: {out}/report.md (.html, .json)" for name, out in summary.reports.items()
    ]
    lines += ["", "Lineage of v2 (`evalkit lineage`):", _lineage(ws, v2)]
    lines += [
        "",
        f"Figures fingerprint (the same on a second run): {summary.fingerprint}",
        f"Everything is in {ws.root}; open the app on it with:",
        f"  evalkit app --workspace {ws.root}",
    ]
    print("\n".join(lines), flush=True)
