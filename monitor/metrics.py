"""Prometheus metrics of a served model, named as vLLM names its own (``model_name`` label,
base units, ``_total`` counters), so quality and drift gauges sit beside a vLLM deployment's.

Built in a function on a registry the caller owns: nothing is registered at import time, and
two servers (or tests) in one process never share counters. With several worker processes
(``evalkit serve --workers N``) prometheus-client's multiprocess mode adds up the workers'
values (:func:`exposition`); each gauge says how (``multiprocess_mode``). Labels are bounded:
the model's name, a status code, a finish reason, a feedback kind; never a user, prompt or
response id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "evalkit"
# Seconds: from a cached or tiny model's milliseconds to a long generation's minute.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass
class ServerMetrics:
    requests: Counter
    running: Gauge
    waiting: Gauge
    latency: Histogram
    time_to_first_token: Histogram
    time_per_output_token: Histogram
    prompt_tokens: Histogram
    generation_tokens: Histogram
    generated_tokens: Counter
    feedback: Counter
    events_ingested: Counter
    events_lost: Counter
    model_info: Gauge  # 1, labelled with the version and template (multiprocess has no Info)
    template_mismatch: Gauge


def server_metrics(registry: CollectorRegistry) -> ServerMetrics:
    """The server's metrics, registered on ``registry``.

    >>> metrics = server_metrics(CollectorRegistry())
    >>> metrics.requests.labels("support-v1", "200", "stop").inc()
    """
    name = ("model_name",)

    def histogram(metric: str, doc: str, buckets) -> Histogram:
        return Histogram(f"{PREFIX}_{metric}", doc, name, buckets=buckets, registry=registry)

    def counter(metric: str, doc: str, labels: tuple = ()) -> Counter:
        return Counter(f"{PREFIX}_{metric}", doc, name + labels, registry=registry)

    def gauge(metric: str, doc: str, mode: str = "livesum", labels: tuple = ()) -> Gauge:
        return Gauge(
            f"{PREFIX}_{metric}", doc, name + labels, registry=registry, multiprocess_mode=mode
        )

    return ServerMetrics(
        requests=counter(
            "requests",
            "Chat completion requests by status and finish reason.",
            ("status", "finish_reason"),
        ),
        running=gauge("requests_running", "Requests being decoded now."),
        waiting=gauge("requests_waiting", "Requests queued for decoding."),
        latency=histogram(
            "e2e_request_latency_seconds", "End-to-end request latency.", LATENCY_BUCKETS
        ),
        time_to_first_token=histogram(
            "time_to_first_token_seconds", "Time to the first generated token.", LATENCY_BUCKETS
        ),
        time_per_output_token=histogram(
            "time_per_output_token_seconds",
            "Time per generated token after the first.",
            TOKEN_LATENCY_BUCKETS,
        ),
        prompt_tokens=histogram(
            "request_prompt_tokens", "Prompt tokens of a request.", TOKEN_BUCKETS
        ),
        generation_tokens=histogram(
            "request_generation_tokens", "Generated tokens of a request.", TOKEN_BUCKETS
        ),
        generated_tokens=counter("generation_tokens", "Generated tokens."),
        feedback=counter("feedback", "User feedback received, by kind.", ("kind",)),
        events_ingested=counter("events_ingested", "Events written to the event log."),
        events_lost=counter("events_lost", "Events the log could not write."),
        model_info=gauge(
            "model_info", "The served model.", "max", ("version", "chat_template_fingerprint")
        ),
        template_mismatch=gauge(
            "chat_template_mismatch",
            "1 when the served chat template differs from the one training or the gate recorded.",
            "max",
        ),
    )


@dataclass
class DriftMetrics:
    """The drift job's gauges: per model and feature (a fixed list), the last window's effect
    size, its threshold, its corrected p-value and the decision (1 drifted, 0 not)."""

    statistic: Gauge
    threshold: Gauge
    p_value: Gauge
    detected: Gauge
    window_events: Gauge
    last_run: Gauge

    def export(self, model: str, results, events: int) -> None:
        for r in results:
            self.statistic.labels(model, r.feature).set(r.value)
            self.threshold.labels(model, r.feature).set(r.threshold)
            self.p_value.labels(model, r.feature).set(r.p_adjusted)
            self.detected.labels(model, r.feature).set(1 if r.drifted else 0)
        self.window_events.labels(model).set(events)
        self.last_run.labels(model).set_to_current_time()


def drift_metrics(registry: CollectorRegistry) -> DriftMetrics:
    """The drift gauges, registered on ``registry`` (the server's, or the job's own)."""
    by_feature = ("model_name", "feature")

    def gauge(metric: str, doc: str, labels=by_feature) -> Gauge:
        return Gauge(
            f"{PREFIX}_drift_{metric}", doc, labels, registry=registry, multiprocess_mode="max"
        )

    return DriftMetrics(
        statistic=gauge("statistic", "The last window's effect size (PSI, JS distance, MMD²)."),
        threshold=gauge("threshold", "The effect size at which a feature counts as drifted."),
        p_value=gauge("p_value", "The last window's p-value, corrected over the features."),
        detected=gauge("detected", "1 when the last window drifted for the feature, else 0."),
        window_events=gauge("window_events", "Exchanges in the last window.", ("model_name",)),
        last_run=gauge(
            "last_run_timestamp_seconds", "When the drift job last judged.", ("model_name",)
        ),
    )


def exposition(registry: CollectorRegistry) -> bytes:
    """``/metrics``: the registry's, or with several workers (PROMETHEUS_MULTIPROC_DIR set)
    every live worker's values, added up as each metric says."""
    from prometheus_client import generate_latest, multiprocess

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(registry)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return generate_latest(merged)
