"""Drift: the alerts firing now, traffic and latency, each drift statistic against its
threshold with the alert periods shaded, and the drifted prompts, which one action queues for
rating."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.history import drift_history
from dashboards.session import guard, store, workspace
from evalkit.errors import EvalkitError
from monitor.overview import (
    alert_periods,
    drift_selection,
    drifted_sample,
    firing_alerts,
    send_drifted,
    traffic,
)

PAGE = "drift"
who = guard(PAGE)
ws = workspace()
st.title("Drift")

st.subheader("Firing alerts")
try:
    with store() as con:
        source, alerts = firing_alerts(con)
except EvalkitError as exc:
    st.error(str(exc))
else:
    st.caption(f"from {source}")
    if alerts:
        st.dataframe(alerts, hide_index=True)
    else:
        st.success("No alert is firing.")

st.subheader("Traffic and latency")
try:
    buckets = traffic(ws.events_dir)
except EvalkitError as exc:
    buckets = []
    st.info(f"No traffic to show: {exc}")
if buckets:
    requests, latency = st.columns(2)
    requests.line_chart(buckets, x="time", y=["requests", "errors"], y_label="per minute")
    latency.line_chart(buckets, x="time", y=["latency_p50_s", "latency_p95_s"], y_label="s")

try:
    with store() as con:
        history = drift_history(con)
except EvalkitError as exc:
    st.error(str(exc))
    st.stop()
if not history or not history[0]:
    st.info("No drift results yet: run `evalkit monitor drift`.")
    st.stop()
results, alerts = history
periods = alert_periods(alerts, until=results[-1]["window_end"])
st.subheader("Drift statistics")
st.caption("each window's statistic against its threshold (dashed); alert periods shaded")
for model, feature in sorted({(r["model"], r["feature"]) for r in results}):
    rows = [r for r in results if (r["model"], r["feature"]) == (model, feature)]
    shaded = [p for p in periods if (p["model"], p["feature"]) == (model, feature)]
    base = alt.Chart(pd.DataFrame(rows)).encode(x=alt.X("window_end:T", title="window end"))
    layers = [
        base.mark_line(point=True).encode(y=alt.Y("value:Q", title=rows[0]["statistic"])),
        base.mark_line(strokeDash=[4, 4], color="gray").encode(y="threshold:Q"),
    ]
    if shaded:
        area = alt.Chart(pd.DataFrame(shaded)).mark_rect(opacity=0.2, color="red")
        layers.insert(0, area.encode(x="start:T", x2="end:T"))
    st.markdown(f"**{model} · {feature}** ({rows[0]['statistic']})")
    st.altair_chart(alt.layer(*layers), width="stretch")

st.subheader("Drifted prompts")
size = st.number_input("Sample size", min_value=1, max_value=500, value=20)
try:
    sample = drifted_sample(ws.events_dir, ws.drift_dir, drift_selection(size))
except EvalkitError as exc:
    st.info(f"No drifted prompts to show: {exc}")
    st.stop()
by = "topic" if sample and sample[0]["topic"] is not None else "window"
st.caption(f"{len(sample)} flagged exchanges, by {by}")
st.dataframe(sample, hide_index=True, column_order=[by, "prompt", "response", "event_id"])
with st.form("send"):
    priority = st.number_input("Priority (higher is rated first)", value=5, step=1)
    overlap = st.number_input("Overlap (annotators per item)", min_value=1, value=2, step=1)
    if st.form_submit_button(f"Send these {len(sample)} prompts to the rating queue"):
        selection = drift_selection(size, priority=int(priority), overlap=int(overlap))
        try:
            with store() as con:
                added = send_drifted(con, who, ws.events_dir, selection, page=PAGE)
        except EvalkitError as exc:
            st.error(str(exc))
        else:
            st.success(f"{added} new item(s) queued ({len(sample) - added} were queued already)")
