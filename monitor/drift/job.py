"""The drift job: references, one pass over the latest window of the log, and what it writes.

A pass judges the latest window (the last ``window_events`` exchanges, or those of the last
``window_s`` seconds) against the reference and writes one row per feature to the store's
``drift_results``; an alert opens in ``drift_alerts`` when a feature drifted in the last
``hold`` passes and closes at the first pass where it did not (the backtest's rule, pass by
pass). The events of a drifted window are flagged in ``WORKSPACE/drift/flags/`` (Parquet:
event_id, feature, judged_at), which the event log's readers join as ``drift_flag``, so
``evalkit rate enqueue events --select drift`` queues them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.events import flags_dir
from monitor.drift.detector import Detector, DriftConfig, Reference, Window, build_reference
from monitor.drift.features import Frame, add_topics, open_events, read_frame
from monitor.events import parse_time

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS drift_results (
        pass_id VARCHAR, model VARCHAR, reference VARCHAR, judged_at TIMESTAMPTZ,
        window_start TIMESTAMPTZ, window_end TIMESTAMPTZ, first_event VARCHAR,
        last_event VARCHAR, events INTEGER, feature VARCHAR, statistic VARCHAR, value DOUBLE,
        threshold DOUBLE, p_value DOUBLE, p_adjusted DOUBLE, drifted BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS drift_alerts (
        model VARCHAR, reference VARCHAR, feature VARCHAR, started_at TIMESTAMPTZ,
        ended_at TIMESTAMPTZ, value DOUBLE, threshold DOUBLE)""",
)


class Featurizer:
    """Reads frames with their topics and prompt embeddings (``embed``: texts -> unit vectors,
    normally an :class:`~monitor.drift.embeddings.EmbeddingCache`; ``topics``: a TopicModel or
    None)."""

    def __init__(self, embed, topics=None):
        self.embed, self.topics = embed, topics

    def read(self, con, where="true", params=None, last=None) -> tuple[Frame, np.ndarray]:
        frame = read_frame(con, where, params, last)
        return frame, add_topics(frame, self.embed, self.topics)


def open_featurizer(drift_dir: Path, labelled=None) -> tuple[Featurizer, str]:
    """The workspace's featurizer: its embedding cache (``drift_dir/embeddings``) and topic
    classifier (``drift_dir/topics.npz``, trained on ``labelled()`` -> (texts, labels) the first
    time; without ``labelled`` and no saved classifier, no topic). Returns it with a line that
    says which classifier it uses."""
    from monitor.drift.embeddings import EmbeddingCache
    from monitor.drift.topics import TopicModel, train_topics

    cache = EmbeddingCache(Path(drift_dir) / "embeddings")
    path = Path(drift_dir) / "topics.npz"
    if path.is_file():
        topics = TopicModel.load(path)
    elif labelled is not None:
        texts, labels = labelled()
        topics = train_topics(cache(texts), labels)
        topics.save(path)
    else:
        return Featurizer(cache), "topic: no classifier, not judged"
    line = (
        f"topic: nearest centroid over {len(topics.labels)} topics, held-out accuracy "
        f"{topics.accuracy:.1%} on {topics.held_out} conversations"
    )
    return Featurizer(cache, topics), line


def load_reference(
    spec: str,
    events_dir: Path,
    featurizer: Featurizer,
    config: DriftConfig,
    mapping: dict[str, str] | None = None,
    store: Path | None = None,
) -> Reference:
    """The reference a spec names: ``log:START..END`` (a period of the event log, ISO dates or
    times, END excluded), ``run:RUN`` (the prompts and outputs of an evaluation run in
    ``store``: what the model was evaluated on; features of serving, such as latency, are left
    out), or ``file:PATH`` (an events file as ``monitor import`` reads it, columns renamed by
    ``mapping``); a bare path is a file."""
    kind, _, rest = spec.partition(":")
    where, params = "true", []
    if kind == "log":
        start, dots, end = rest.partition("..")
        if not dots:
            raise EvalkitError(f"--reference {spec!r}: give log:START..END")
        con = open_events(events_dir)
        where = "ts >= epoch_us(?::TIMESTAMPTZ) AND ts < epoch_us(?::TIMESTAMPTZ)"
        params = [parse_time(start), parse_time(end)]
    elif kind == "run":
        con = _run_events(store, rest)
    else:
        con = open_events(rest if kind == "file" else spec, mapping)
    try:
        frame, embeddings = featurizer.read(con, where, params)
    finally:
        con.close()
    return build_reference(frame, embeddings, config)


def _run_events(store: Path | None, ref: str):
    """A DuckDB connection whose view ``events`` holds an evaluation run's examples."""
    import duckdb

    from evalkit.results import resolve
    from evalkit.store import open_store

    if store is None or not Path(store).is_file():
        raise EvalkitError(f"--reference run:{ref}: no store with evaluation runs")
    with open_store(store) as source:
        run_id = resolve(source, ref)
        table = source.sql(
            """SELECT e.task || '/' || e.example_id AS event_id, r.started_at AS timestamp,
                      e.prompt, e.output AS response
               FROM eval_examples e JOIN eval_runs r USING (run_id)
               WHERE run_id = ? AND e.prompt IS NOT NULL ORDER BY e.task, e.example_id""",
            params=[run_id],
        ).to_arrow_table()
    con = duckdb.connect()
    con.register("events_table", table)
    con.execute("CREATE VIEW events AS SELECT * FROM events_table")
    return con


@dataclass
class Pass:
    """One pass of the job: the window judged and where its events lie."""

    window: Window
    frame: Frame
    judged_at: datetime


def drift_pass(
    reference: Reference,
    config: DriftConfig,
    events_dir: Path,
    featurizer: Featurizer,
    model: str | None = None,
    now: datetime | None = None,
    since: datetime | None = None,
) -> Pass:
    """Judge the latest window of the log against ``reference`` (of the exchanges logged
    from ``since`` on, if given)."""
    now = now or datetime.now(UTC)
    where, params = ("model = ?", [model]) if model else ("true", [])
    if since is not None:
        where += " AND ts >= epoch_us(?::TIMESTAMPTZ)"
        params.append(since)
    con = open_events(events_dir)
    try:
        if config.by_time:
            where += " AND ts > epoch_us(?::TIMESTAMPTZ) - ?"
            params += [now, int(config.window_s * 1e6)]
            frame, embeddings = featurizer.read(con, where, params)
        else:
            frame, embeddings = featurizer.read(con, where, params, last=config.window_events)
    finally:
        con.close()
    if len(frame) == 0:
        raise EvalkitError(
            "the window holds no exchange" + (f" of model {model!r}" if model else ""),
            hint="send traffic, widen --window, or check --model",
        )
    detector = Detector(reference, config, frame, embeddings)
    window = Window(0, len(frame), int(frame.timestamps[-1]), detector.judge(0, len(frame)))
    return Pass(window, frame, now)


def _micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1e6, UTC)


def record(con, result: Pass, config: DriftConfig, model: str, reference: str) -> list[dict]:
    """Write a pass's rows, open and close alerts; returns the alerts opened or closed."""
    from evalkit.store import insert_columns, transaction

    for statement in SCHEMA:
        con.execute(statement)
    window, frame = result.window, result.frame
    pass_id = f"drift-{uuid.uuid4().hex[:12]}"
    rows = [
        (
            pass_id,
            model,
            reference,
            result.judged_at,
            _micros(int(frame.timestamps[0])),
            _micros(int(frame.timestamps[-1])),
            str(frame.event_ids[0]),
            str(frame.event_ids[-1]),
            len(frame),
            r.feature,
            r.statistic,
            r.value,
            r.threshold,
            r.p_value,
            r.p_adjusted,
            r.drifted,
        )
        for r in window.results
    ]
    types = ["VARCHAR", "VARCHAR", "VARCHAR", "TIMESTAMPTZ", "TIMESTAMPTZ", "TIMESTAMPTZ"]
    types += ["VARCHAR", "VARCHAR", "INTEGER", "VARCHAR", "VARCHAR", "DOUBLE", "DOUBLE"]
    types += ["DOUBLE", "DOUBLE", "BOOLEAN"]
    changes = []
    with transaction(con):
        insert_columns(con, "drift_results", rows, types)
        for r in window.results:
            recent = con.execute(
                """SELECT drifted FROM drift_results WHERE model = ? AND reference = ?
                   AND feature = ? ORDER BY judged_at DESC LIMIT ?""",
                [model, reference, r.feature, config.hold],
            ).fetchall()
            firing = con.execute(
                """SELECT count(*) FROM drift_alerts WHERE model = ? AND reference = ?
                   AND feature = ? AND ended_at IS NULL""",
                [model, reference, r.feature],
            ).fetchone()[0]
            if not firing and len(recent) == config.hold and all(d for (d,) in recent):
                con.execute(
                    "INSERT INTO drift_alerts VALUES (?, ?, ?, ?, NULL, ?, ?)",
                    [model, reference, r.feature, result.judged_at, r.value, r.threshold],
                )
                changes.append({"feature": r.feature, "state": "firing"})
            elif firing and not r.drifted:
                con.execute(
                    """UPDATE drift_alerts SET ended_at = ? WHERE model = ? AND reference = ?
                       AND feature = ? AND ended_at IS NULL""",
                    [result.judged_at, model, reference, r.feature],
                )
                changes.append({"feature": r.feature, "state": "resolved"})
    return changes


def write_flags(events_dir: Path, result: Pass) -> int:
    """Flag the events of a drifted window (one row per event and drifted feature)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    drifted = result.window.drifted
    if not drifted:
        return 0
    ids, n = result.frame.event_ids, len(result.frame)
    table = pa.table(
        {
            "event_id": pa.concat_arrays([ids] * len(drifted)),
            "feature": pa.array(np.repeat(drifted, n)),
            "judged_at": pa.array(np.full(n * len(drifted), result.judged_at)),
        }
    )
    folder = flags_dir(events_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{result.judged_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(table, folder / f".{name}.tmp")
    (folder / f".{name}.tmp").rename(folder / name)
    return n


class DriftJob:
    """Runs :func:`drift_pass` every ``every`` seconds in a thread until :meth:`close`,
    writing the store (if given) and the flags, and setting ``metrics`` (DriftMetrics)."""

    def __init__(
        self,
        reference: Reference,
        config: DriftConfig,
        events_dir: Path,
        featurizer: Featurizer,
        *,
        every: float,
        model: str,
        reference_label: str,
        store: Path | None = None,
        metrics=None,
        filter_model: bool = False,
        since: datetime | None = None,
    ):
        self.args = (reference, config, events_dir, featurizer)
        self.every, self.model, self.label = every, model, reference_label
        self.store, self.metrics, self.filter_model = store, metrics, filter_model
        self.since = since  # judge only the exchanges logged from then on
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="drift", daemon=True)

    def start(self) -> DriftJob:
        self.thread.start()
        return self

    def run_once(self) -> tuple[Pass, list[dict]]:
        """One pass: the gauges, the flags and the store; returns it with the alerts opened
        or closed."""
        from evalkit.store import open_store

        reference, config, events_dir, featurizer = self.args
        model = self.model if self.filter_model else None
        result = drift_pass(reference, config, events_dir, featurizer, model, since=self.since)
        if self.metrics is not None:
            self.metrics.export(self.model, result.window.results, len(result.frame))
        write_flags(events_dir, result)
        changes = []
        if self.store is not None:
            with open_store(self.store) as con:
                changes = record(con, result, config, self.model, self.label)
        return result, changes

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.run_once()
            except EvalkitError as exc:  # no events yet: nothing to judge this time
                log.info("drift: %s", exc.message)
            except Exception:  # a failing pass must not end the job: the next one may work
                log.exception("drift pass failed")

    def close(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
