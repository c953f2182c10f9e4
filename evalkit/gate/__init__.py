"""The release gate: rules over a comparison, three reports, and an exit code for CI.

A spec (TOML) holds rules::

    alpha = 0.05          # significance level of every rule
    n_resamples = 2000
    seed = 0
    inconclusive = "fail" # what a rule judged inconclusive makes of the gate: fail, warn, pass

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

    [[rules]]             # on by default (max_share = 0.01): a spec can only loosen it
    type = "contamination"
    max_share = 0.01      # of a task's examples sharing a 13-gram with the training data

A metric rule names one of ``max_increase``, ``max_drop``, ``max_relative_increase`` or
``max_relative_drop``. It fails when the candidate is worse than the threshold allows and the
difference is significant (its interval excludes zero and p < alpha); worse but not
significant is ``inconclusive``, and a rule whose threshold is below what the sample can
detect carries a warning. ``require_significance = false`` fails on the observed value alone.
A bias rule compares, per category, the distance of the score from no preference (``center``,
0.5 for the share preferring the stereotype) and fails where the candidate's distance is larger
with an interval above zero. The contamination rule fails where more than ``max_share`` of a
task's examples share an n-gram with the candidate's training data (as its lineage names it);
it is inconclusive where that data is gone or changed, and not judged (a warning) where the
candidate names none.

The gate also fails when the runs used different chat templates, and stops with an error (exit
2) when they are of different suites. An inconclusive rule makes the gate's outcome
inconclusive (``inconclusive = "fail"``, the default), a pass with a warning (``"warn"``) or a
pass (``"pass"``). Exit codes: 0 pass, 1 regression, 2 error, 3 inconclusive.
"""

from evalkit.gate.judge import (
    GateReport,
    RuleResult,
    judge_bias,
    judge_contamination,
    judge_metric,
    run_gate,
    too_small_to_detect,
)
from evalkit.gate.report import (
    last_report_for,
    record_report,
    render_html,
    render_markdown,
    report_name,
    write_reports,
)
from evalkit.gate.spec import EXIT_CODES, FAIL, INCONCLUSIVE, PASS, GateSpec, Rule, load_spec

__all__ = [
    "EXIT_CODES",
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "GateReport",
    "GateSpec",
    "Rule",
    "RuleResult",
    "judge_bias",
    "judge_contamination",
    "judge_metric",
    "last_report_for",
    "load_spec",
    "record_report",
    "render_html",
    "render_markdown",
    "report_name",
    "run_gate",
    "too_small_to_detect",
    "write_reports",
]
