"""Drift decisions over windows of events, and the alerts they raise.

**The rule.** Every window is compared with the reference, feature by feature, on an effect
size with a threshold: PSI for numeric features (bins fixed from the reference's deciles;
0.2 is the conventional "significant shift"), the Jensen-Shannon distance in base 2 for
categorical ones (0.1; categories expected fewer than 5 times in the window pooled), and the
squared MMD of the prompt embeddings (random Fourier features of a Gaussian kernel at the
reference's median distance; 0.03 is twice the 99th percentile of MMD² between 50-prompt
samples of the support FAQ and the rest of it, and a third of support against chit-chat). A
feature *drifts in a window* when its effect size reaches the threshold **and** its test
rejects at ``alpha`` after Holm's correction over the features of the window (for categorical
features chi-square of homogeneity, which counts the reference's own noise; for numeric ones
Kolmogorov-Smirnov and for MMD the permutation test, run only when the effect reaches its
threshold: a p-value not computed counts as 1, which keeps Holm's guarantee). An **alert**
fires when a feature drifts in ``hold`` consecutive windows and ends at the first window where
it does not. Tumbling windows are disjoint samples, so by chance alone a feature drifts in a
window with probability below ``alpha`` and raises an alert with probability below
``alpha ** hold``; the effect threshold makes it rarer still, and a large sample can never
raise an alert on a difference too small to matter. A live job whose window is longer than its
interval judges overlapping windows, which share events: the bound then holds only per disjoint
stretch, so keep the window no longer than the interval where the guarantee matters.

The same :func:`backtest` serves a replay of recorded traffic (simulated time: each window is
judged at its last event's timestamp) and the live job (``drift_pass`` judges the latest
window); the Prometheus rule holds ``evalkit_drift_detected`` for the same number of windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evalkit.errors import EvalkitError, unknown_name
from monitor.drift import statistics as st
from monitor.drift.features import CATEGORICAL, FEATURES, MISSING, NUMERIC, Frame

# Effect-size thresholds (the module's doc says why these values).
PSI_THRESHOLD = 0.2
JS_THRESHOLD = 0.1
MMD_THRESHOLD = 0.03
MMD_SAMPLES = 500  # events per side in the MMD test (seeded subsample beyond)
STATISTICS = {**dict.fromkeys(NUMERIC, "psi"), **dict.fromkeys(CATEGORICAL, "jensen_shannon")}
STATISTICS["prompt_embedding"] = "mmd2"
CORRECTIONS = ("holm", "bh")
RARE = 5  # expected count under which categories are pooled (Cochran's rule)
POOLED = "(rare)"


def default_threshold(feature: str) -> float:
    return {"psi": PSI_THRESHOLD, "jensen_shannon": JS_THRESHOLD, "mmd2": MMD_THRESHOLD}[
        STATISTICS[feature]
    ]


@dataclass(frozen=True)
class DriftConfig:
    """Windows, the decision rule and the features judged (see the module's doc)."""

    window_events: int | None = None  # a window of this many events ...
    window_s: float | None = None  # ... or of this many seconds (give one)
    step: float | None = None  # events or seconds between windows (default: the window)
    hold: int = 3  # consecutive drifted windows that raise an alert
    alpha: float = 0.01
    correction: str = "holm"  # or "bh" (Benjamini-Hochberg)
    features: tuple[str, ...] = FEATURES
    thresholds: dict[str, float] = field(default_factory=dict)  # overrides, by feature
    min_reference: int = 200  # reference events needed
    min_window: int = 50  # values a window needs for a feature to be judged
    permutations: int = 1000  # enough for Holm over ten features at alpha 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.window_events is None) == (self.window_s is None):
            raise EvalkitError("give a window by events or by time, not both and not neither")
        size = self.window_events or self.window_s or 0
        if size <= 0 or (self.step is not None and self.step <= 0):
            raise EvalkitError("a window and its step must be positive")
        if self.hold < 1 or not 0 < self.alpha < 1:
            raise EvalkitError("hold must be 1 or more and alpha between 0 and 1")
        if self.correction not in CORRECTIONS:
            raise unknown_name("correction", self.correction, CORRECTIONS)
        for name in (*self.features, *self.thresholds):
            if name not in FEATURES:
                raise unknown_name("feature", name, FEATURES)

    @property
    def by_time(self) -> bool:
        return self.window_s is not None

    def threshold(self, feature: str) -> float:
        return self.thresholds.get(feature, default_threshold(feature))


@dataclass
class Reference:
    """What each feature's windows are compared with."""

    size: int
    numeric: dict[str, st.NumericReference]
    categorical: dict[str, st.CategoricalReference]
    rff: Callable | None  # embeddings -> random Fourier features
    embedding: np.ndarray | None  # the reference's random Fourier features
    notes: list[str]


def build_reference(frame: Frame, embeddings: np.ndarray, config: DriftConfig) -> Reference:
    """The reference from ``frame`` (its distinct texts' ``embeddings``). Features with no
    value in the reference are left out with a note; too few events is an error."""
    if len(frame) < config.min_reference:
        raise EvalkitError(
            f"the reference has {len(frame)} exchanges: {config.min_reference} or more are "
            "needed to judge drift",
            hint="widen the reference period, or lower min_reference",
        )
    notes: list[str] = []
    numeric, categorical = {}, {}
    for name in config.features:
        if name in NUMERIC:
            values = frame.numeric[name]
            values = values[~np.isnan(values)]
            if len(values) < config.min_reference:
                notes.append(f"{name}: {len(values)} reference values, not judged")
                continue
            if np.all(values == values[0]):
                notes.append(f"{name}: constant in the reference ({values[0]:g})")
            numeric[name] = st.numeric_reference(values)
        elif name in CATEGORICAL:
            if name not in frame.categorical:
                notes.append(f"{name}: not computed, not judged")
                continue
            values = frame.categorical[name]
            values = values[values != MISSING]
            if len(values) < config.min_reference:
                notes.append(f"{name}: {len(values)} reference values, not judged")
                continue
            if len(set(values)) == 1:
                notes.append(f"{name}: constant in the reference ({values[0]})")
            categorical[name] = st.categorical_reference(values)
    rff = reference_z = None
    if "prompt_embedding" in config.features and len(embeddings):
        points = embeddings[frame.text_index]
        rng = np.random.default_rng(config.seed)
        bandwidth = st.median_bandwidth(points, seed=config.seed)
        rff = st.rff_map(points.shape[1], bandwidth=bandwidth, seed=config.seed)
        sample = points[rng.permutation(len(points))[:MMD_SAMPLES]]
        reference_z = rff(sample)
    elif "prompt_embedding" in config.features:
        notes.append("prompt_embedding: no prompt text, not judged")
    return Reference(len(frame), numeric, categorical, rff, reference_z, notes)


@dataclass(frozen=True)
class FeatureResult:
    feature: str
    statistic: str  # psi, jensen_shannon or mmd2
    value: float  # NaN when the window had too few values to judge
    threshold: float
    p_value: float  # NaN when not computed
    p_adjusted: float
    drifted: bool
    values: int  # values judged in the window


@dataclass(frozen=True)
class Window:
    start: int  # first event's index
    end: int  # one past the last event's index
    at: int  # when it is judged: its last event's timestamp (microseconds)
    results: tuple[FeatureResult, ...]

    @property
    def drifted(self) -> list[str]:
        return [r.feature for r in self.results if r.drifted]


class Detector:
    """Judges windows of ``frame`` (events in time order) against ``reference``."""

    def __init__(
        self, reference: Reference, config: DriftConfig, frame: Frame, embeddings: np.ndarray
    ):
        self.reference, self.config, self.frame = reference, config, frame
        self.z = None
        if reference.rff is not None and len(embeddings):
            self.z = reference.rff(embeddings)  # one row per distinct text
            self.reference_mean = reference.embedding.mean(0)

    def judge(self, start: int, end: int) -> tuple[FeatureResult, ...]:
        config, ref, frame = self.config, self.reference, self.frame
        raw = []  # (feature, statistic, value, p)
        for name, numeric in ref.numeric.items():
            values = frame.numeric[name][start:end]
            values = values[~np.isnan(values)]
            if len(values) < config.min_window:
                raw.append((name, math.nan, math.nan, len(values)))
                continue
            psi, p = st.numeric_psi(numeric, values), math.nan
            if psi >= config.threshold(name):  # the test only where it can matter
                p = st.numeric_drift(numeric, values).ks_p
            raw.append((name, psi, p, len(values)))
        for name, categorical in ref.categorical.items():
            values = frame.categorical[name][start:end]
            values = values[values != MISSING]
            if len(values) < config.min_window:
                raw.append((name, math.nan, math.nan, len(values)))
                continue
            pooled, values = _pooled(categorical, values)
            js = st.categorical_drift(pooled, values).jensen_shannon
            raw.append((name, js, st.chi2_two_sample(pooled, values)[1], len(values)))
        if self.z is not None:
            raw.append(self._mmd(frame.text_index[start:end]))
        p = np.array([r[2] for r in raw], dtype=float)
        tested = np.where(np.isnan(p), 1.0, p)
        adjusted = st.holm(tested) if config.correction == "holm" else st.benjamini_hochberg(tested)
        results = []
        for (name, value, p_value, count), p_adj in zip(raw, adjusted):
            threshold = config.threshold(name)
            drifted = bool(value >= threshold and p_adj < config.alpha)
            results.append(
                FeatureResult(
                    name,
                    STATISTICS[name],
                    float(value),
                    threshold,
                    float(p_value),
                    float(p_adj),
                    drifted,
                    int(count),
                )
            )
        return tuple(results)

    def _mmd(self, index: np.ndarray) -> tuple:
        config, name = self.config, "prompt_embedding"
        if len(index) < config.min_window:
            return (name, math.nan, math.nan, len(index))
        if len(index) > MMD_SAMPLES:
            index = np.random.default_rng(config.seed).choice(index, MMD_SAMPLES, replace=False)
        current = self.z[index]
        gap = self.reference_mean - current.mean(0)
        value = float(gap @ gap)
        p = math.nan
        if value >= config.threshold(name):  # the permutation test only where it can matter
            value, p = st.mmd(
                self.reference.embedding, current, n_permutations=config.permutations,
                seed=config.seed, max_samples=MMD_SAMPLES,
            )  # fmt: skip
        return (name, value, p, len(index))


def _pooled(ref: st.CategoricalReference, values: np.ndarray):
    """Cochran's rule: categories expected fewer than 5 times in the window, and those the
    reference never saw, are pooled into one, so that chi-square's approximation holds and
    sparse categories (20 topics in a window of 200) do not inflate the distance by chance."""
    expected = ref.proportions * len(values)
    keep = [c for c, e in zip(ref.categories, expected) if e >= RARE]
    if len(keep) == len(ref.categories):
        return ref, values
    shares = [p for c, p, e in zip(ref.categories, ref.proportions, expected) if e >= RARE]
    pooled = st.CategoricalReference(
        (*keep, POOLED), np.array([*shares, 1 - sum(shares)]), ref.count
    )
    return pooled, np.where(np.isin(values, keep), values, POOLED)


def windows(timestamps: np.ndarray, config: DriftConfig) -> list[tuple[int, int, int]]:
    """(start, end, at) of every window over events in time order: by count, windows of
    ``window_events`` every ``step`` events; by time, windows of ``window_s`` seconds ending
    every ``step`` seconds from the first event on, judged at their end."""
    n = len(timestamps)
    if not config.by_time:
        size = int(config.window_events)
        step = int(config.step or size)
        return [(end - size, end, int(timestamps[end - 1])) for end in range(size, n + 1, step)]
    if n == 0:
        return []
    size = int(config.window_s * 1e6)
    step = int((config.step or config.window_s) * 1e6)
    out = []
    at = int(timestamps[0]) + size
    while at - step < timestamps[-1]:
        start = int(np.searchsorted(timestamps, at - size, "right"))
        end = int(np.searchsorted(timestamps, at, "right"))
        if end > start:
            out.append((start, end, at))
        at += step
    return out


@dataclass
class Alert:
    feature: str
    started_at: int  # microseconds: when the window that raised it was judged
    fired_index: int  # the event at which it fired (the raising window's last)
    first_index: int  # first event of the ``hold`` windows that raised it
    last_index: int  # last event of those windows
    ended_at: int | None = None  # when the first window without drift was judged
    ended_index: int | None = None


def follow(results: list[Window], hold: int) -> list[Alert]:
    """The alerts a sequence of judged windows raises (the rule in the module's doc)."""
    run: dict[str, list[Window]] = {}
    open_: dict[str, Alert] = {}
    alerts = []
    for window in results:
        for r in window.results:
            if r.drifted:
                run.setdefault(r.feature, []).append(window)
                streak = run[r.feature]
                if len(streak) == hold and r.feature not in open_:
                    alert = Alert(
                        r.feature, window.at, window.end - 1, streak[0].start, window.end - 1
                    )
                    open_[r.feature] = alert
                    alerts.append(alert)
            else:
                run.pop(r.feature, None)
                if r.feature in open_:
                    closed = open_.pop(r.feature)
                    closed.ended_at, closed.ended_index = window.at, window.end - 1
    return alerts


@dataclass
class Backtest:
    windows: list[Window]
    alerts: list[Alert]


def backtest(detector: Detector) -> Backtest:
    """Every window of the detector's frame judged in time order, and the alerts raised."""
    judged = [
        Window(start, end, at, detector.judge(start, end))
        for start, end, at in windows(detector.frame.timestamps, detector.config)
    ]
    return Backtest(judged, follow(judged, detector.config.hold))
