"""Evidently's drift values and timings, run inside its own virtual environment.

Evidently pins its own dependencies, so it lives in ``benchmarks/.venv-evidently`` (built by
``make bench``) and this script is run there by ``benchmarks/bench_drift.py`` and
``tests/monitor/test_drift_evidently.py``. It reads ``reference.parquet`` and
``current.parquet`` from a folder (float columns are numerical, the rest categorical) and prints
one JSON object:

    values FOLDER COLUMN:METHOD ...   {"COLUMN:METHOD": value}: a ValueDrift per pair, e.g.
                                      ``x:psi``, ``x:ks`` (its p-value), ``c:chisquare`` (p)
    preset FOLDER                     {"seconds": s, "values": {column: [method, value]}}:
                                      DataDriftPreset over every column, seconds of report.run
"""

import json
import os
import sys
import time

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset


def datasets(folder: str, rows: int | None = None) -> tuple[Dataset, Dataset]:
    frames = [pd.read_parquet(f"{folder}/{name}.parquet") for name in ("reference", "current")]
    if rows is not None:
        frames = [frame.head(rows) for frame in frames]
    numeric = [c for c in frames[0] if pd.api.types.is_float_dtype(frames[0][c])]
    definition = DataDefinition(
        numerical_columns=numeric,
        categorical_columns=[c for c in frames[0] if c not in numeric],
    )
    reference, current = (Dataset.from_pandas(f, data_definition=definition) for f in frames)
    return reference, current


def values(folder: str, pairs: list[str]) -> dict:
    reference, current = datasets(folder)
    metrics = [ValueDrift(column=p.split(":")[0], method=p.split(":")[1]) for p in pairs]
    result = Report(metrics).run(current, reference).dict()["metrics"]
    return {pair: float(m["value"]) for pair, m in zip(pairs, result, strict=True)}


def preset(folder: str) -> dict:
    reference, current = datasets(folder)
    small_reference, small_current = datasets(folder, rows=2000)
    Report([DataDriftPreset()]).run(small_current, small_reference)  # warm-up: first-call costs
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current, reference)
    seconds = time.perf_counter() - started
    drifts = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            drifts[config["column"]] = [config["method"], float(metric["value"])]
    return {"seconds": seconds, "values": drifts}


if __name__ == "__main__":
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry: off
    command, folder, *pairs = sys.argv[1:]
    print(json.dumps(values(folder, pairs) if command == "values" else preset(folder)))
