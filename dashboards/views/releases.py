"""Releases: runs and gate reports newest first with their badges, two runs side by side, and
the reports to download."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.charts import interval_chart
from dashboards.history import gate_reports
from dashboards.session import guard, store, workspace
from evalkit.compare import compare_runs
from evalkit.errors import EvalkitError
from evalkit.releases import lineage, metadata_fields, metric_rows, slice_rows, worst
from evalkit.results import get_run, list_runs

guard("releases")
st.title("Releases")
BADGES = {"complete": "✅ complete", "running": "⏳ running", "failed": "❌ failed"}
VERDICTS = {"PASS": "✅ PASS", "FAIL": "❌ FAIL"}


def compare_view(baseline: str, candidate: str) -> None:
    """The comparison of two runs: metrics, intervals, slices, worst examples."""
    try:
        with store() as con:
            comparison = compare_runs(con, baseline, candidate)
            fields = metadata_fields(comparison)
    except EvalkitError as exc:
        st.error(str(exc))
        return
    rows = metric_rows(comparison.metrics, comparison.alpha)
    for row in rows:
        row["name"] = f"{row['task']} · {row['metric']}"
    st.dataframe(
        rows, hide_index=True, column_order=[k for k in rows[0] if k not in ("low", "high", "name")]
    )
    st.altair_chart(interval_chart(rows, "name"), width="stretch")
    names = [row["name"] for row in rows]
    by = st.selectbox("Per slice of", ["(no slice)", *fields])
    if by != "(no slice)":
        with store() as con:
            sliced = compare_runs(con, baseline, candidate, by=[by])
        per_slice = slice_rows(sliced, by)
        st.dataframe(
            per_slice,
            hide_index=True,
            column_order=[k for k in per_slice[0] if k not in ("low", "high")],
        )
        shown = st.selectbox("Bars of", names, key="slice_metric")
        task, metric = shown.split(" · ")
        bars = [r for r in per_slice if (r["task"], r["metric"]) == (task, metric)]
        st.altair_chart(
            alt.Chart(pd.DataFrame(bars))
            .mark_bar()
            .encode(x=alt.X(f"{by}:N"), y=alt.Y("difference:Q", title="candidate - baseline"))
            + alt.Chart(pd.DataFrame(bars)).mark_rule().encode(x=f"{by}:N", y="low:Q", y2="high:Q"),
            width="stretch",
        )
    shown = st.selectbox("Worst examples by", names, key="worst_metric")
    task, metric = shown.split(" · ")
    with store() as con:
        examples = worst(con, comparison, task, metric)
    if not examples:
        st.caption(f"No example got worse in {metric}.")
    for example in examples:
        with st.expander(
            f"{example['example_id']}: {example['baseline_value']:.4g} → "
            f"{example['candidate_value']:.4g}"
        ):
            st.markdown("**Prompt**")
            st.text(example["prompt"] or "")
            left, right = st.columns(2)
            left.markdown("**Baseline**")
            left.text(example["baseline_output"] or "(no response: a scored text)")
            right.markdown("**Candidate**")
            right.text(example["candidate_output"] or "(no response: a scored text)")


try:
    with store() as con:
        runs = list_runs(con)[::-1]
        reports = gate_reports(con) or []
except EvalkitError as exc:
    st.error(str(exc))
    st.stop()

st.subheader("Runs")
if not runs:
    st.info("No runs yet: run `evalkit eval` first.")
else:
    st.dataframe(
        [{**run, "status": BADGES.get(run["status"], run["status"])} for run in runs],
        hide_index=True,
    )

st.subheader("Gate reports")
if not reports:
    st.info("No gate reports yet: run `evalkit gate BASELINE CANDIDATE --spec FILE`.")
for report in reports:
    verdict = VERDICTS.get(report["verdict"], f"⚠️ {report['verdict']}")
    with st.expander(
        f"{verdict} · {report['baseline_run']} → {report['candidate_run']} · "
        f"{report['created_at']:%Y-%m-%d %H:%M}"
    ):
        if not report["files"]:
            st.caption(f"the report files are no longer in {report['path']}")
        for column, path in zip(st.columns(3), report["files"]):
            column.download_button(
                path.name,
                path.read_bytes(),
                file_name=path.name,
                key=f"{report['report_id']}-{path.name}",
            )

complete = [run["run_id"] for run in runs if run["status"] == "complete"]
st.subheader("Two runs side by side")
# ?baseline=ID&candidate=ID opens a comparison from a link; a link can outlive its runs.
linked = [st.query_params.get(side) for side in ("baseline", "candidate")]
try:
    with store() as con:
        linked = [get_run(con, ref)["run_id"] if ref else None for ref in linked]
except EvalkitError as exc:
    st.error(f"{exc.message}: it may have been removed; pick two runs below.")
    linked = [None, None]
if len(complete) < 2:
    st.info("Two complete runs are needed to compare.")
else:
    left, right = st.columns(2)
    index = [complete.index(r) if r in complete else d for r, d in zip(linked, (1, 0))]
    baseline = left.selectbox("Baseline", complete, index=index[0])
    candidate = right.selectbox("Candidate", complete, index=index[1])
    if st.button("Compare") or all(linked):
        st.session_state.compared = (baseline, candidate)
    if st.session_state.get("compared") == (baseline, candidate):
        compare_view(baseline, candidate)

st.subheader("Lineage of a model")
if runs:
    run = st.selectbox("The model of run", [r["run_id"] for r in runs], key="lineage_run")
    try:
        with store() as con:
            chain = lineage(con, run, workspace().events_dir)
    except EvalkitError as exc:
        st.error(str(exc))
    else:
        st.caption(" → ".join(dict.fromkeys(step["step"] for step in chain)))
        st.dataframe(chain, hide_index=True)
