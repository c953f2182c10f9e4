"""Retrain: the next training set from feedback, its training in the background, the gate's
verdict against the current model, and the loop's history."""

import streamlit as st

from dashboards.retrain import (
    Plan,
    build_training_set,
    history,
    job_state,
    jobs,
    launch,
    progress,
    stop,
)
from dashboards.session import guard, store, workspace
from evalkit.errors import EvalkitError
from evalkit.rating.queue import utc_now
from evalkit.results import get_run, list_runs

PAGE = "retrain"
who = guard(PAGE)
ws = workspace()
state = st.session_state
st.title("Retrain")

try:
    with store() as con:
        runs = [r for r in list_runs(con)[::-1] if r["status"] == "complete"]
except EvalkitError as exc:
    st.error(str(exc))
    st.stop()

st.subheader("1 · The current model")
if not runs:
    st.info("No complete evaluation run yet: evaluate the current model (`evalkit eval`) first.")
    st.stop()
baseline = st.selectbox(
    "Its evaluation run (the baseline of the gate)",
    runs,
    format_func=lambda r: f"{r['name'] or r['run_id']} · {r['suite_name']} · {r['run_id']}",
)
with store() as con:
    current = get_run(con, baseline["run_id"])["model_path"] or ""
base = st.text_input("Its model directory (training starts from it)", current)

st.subheader("2 · The next training set")
if st.button("Build it from the feedback"):
    out = ws.datasets_dir / f"feedback-{utc_now():%Y%m%d-%H%M%S}"
    try:
        with store() as con:
            state.training_set = build_training_set(
                con, who, ws.events_dir, out, model=base or None, page=PAGE
            )
    except EvalkitError as exc:
        st.error(str(exc))
built = state.get("training_set")
if built is not None:
    counts = built.manifest["counts"]
    columns = st.columns(5)
    for column, (source, n) in zip(columns, built.raw.items()):
        column.metric(source, n)
    columns[3].metric("kept (train)", counts["train"])
    columns[4].metric("dropped", counts["dropped"])
    if built.low_rated_uncorrected:
        st.caption(
            f"{built.low_rated_uncorrected} low-rated exchange(s) have no correction and are not "
            "trained on: queue them for correction (`evalkit rate enqueue events --select "
            "low_feedback --kind correction`)."
        )
    for source, examples in built.examples.items():
        with st.expander(f"{source}: examples"):
            for example in examples:
                st.json(example["messages"], expanded=False)
    with st.expander("Data preparation report"):
        st.markdown(built.report)
    with st.expander("Manifest"):
        st.json(built.manifest, expanded=False)

st.subheader("3 · Train, evaluate, gate")
with st.form("launch"):
    dataset = st.text_input("Dataset folder", str(built.folder) if built else "")
    suite = st.text_input("Suite file (the baseline run's)")
    spec = st.text_input("Gate spec file")
    max_steps = st.number_input("Max steps (0: one epoch)", min_value=0, value=0, step=1)
    if st.form_submit_button("Launch", type="primary"):
        try:
            plan = Plan(base, dataset, baseline["run_id"], suite, spec, int(max_steps) or None)
            with store() as con:
                job = launch(con, who, plan, ws.root, page=PAGE)
            st.success(f"{job['job_id']} started (pid {job['pid']})")
        except EvalkitError as exc:
            st.error(str(exc))

VERDICTS = {"PASS": "✅ PASS", "FAIL": "❌ FAIL"}


@st.fragment(run_every=2)
def job_list() -> None:
    """The jobs, redrawn every 2 s: progress from each run's metrics.jsonl."""
    try:
        with store() as con:
            found = [(job, job_state(con, job)) for job in jobs(con)]
    except EvalkitError as exc:
        st.error(str(exc))
        return
    if not found:
        st.caption("No job yet.")
    for job, now in found:
        verdict = VERDICTS.get(now["verdict"], now["verdict"] or "")
        st.markdown(f"**{job['job_id']}** · {now['stage']} {verdict}")
        if now["max_steps"]:
            st.progress(min(now["step"] / now["max_steps"], 1.0), f"step {now['step']}")
        steps = progress(job["run_dir"])
        if steps:
            st.line_chart([s for s in steps if "loss" in s], x="step", y="loss")
        running = now["stage"] in ("training", "evaluating")
        if running and st.button("Stop", key=f"stop-{job['job_id']}"):
            try:
                with store() as con:
                    stop(con, who, job, page=PAGE)
            except EvalkitError as exc:
                st.error(str(exc))
        if now["stage"] in ("failed", "stopped"):
            st.caption(f"its log: {job['run_dir']}/job.log")


st.subheader("Jobs")
job_list()

st.subheader("The loop")
try:
    with store() as con:
        loop = history(con)
except EvalkitError as exc:
    st.error(str(exc))
else:
    if loop:
        st.dataframe(loop, hide_index=True)
    else:
        st.caption("No release from feedback yet.")
