"""The workspace: one folder that holds the store, models, datasets, runs and events.

Layout (every part agrees on it)::

    .evalkit/
      evalkit.duckdb      runs, reports, rating queue, annotators, releases
      models/             model directories in Hugging Face format (base models cached by config)
      datasets/           prepared dataset directories
      runs/               training and evaluation run directories
      events/             the monitor's Hive-partitioned Parquet event log

The folder is chosen by, in order: an explicit path (the CLI's ``--workspace``), the
``EVALKIT_WORKSPACE`` environment variable, then ``./.evalkit``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError

ENV_VAR = "EVALKIT_WORKSPACE"
DEFAULT_DIR = ".evalkit"
SUBDIRS = ("models", "datasets", "runs", "events")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def store_path(self) -> Path:
        return self.root / "evalkit.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def events_dir(self) -> Path:
        return self.root / "events"


def open_workspace(path: str | os.PathLike | None = None) -> Workspace:
    """Resolve the workspace folder, create its layout and check that it can be written."""
    root = Path(path or os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()
    try:
        for sub in SUBDIRS:
            (root / sub).mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise EvalkitError(
            f"workspace {root} cannot be written: {exc.strerror or exc}",
            hint=f"pass --workspace DIR or set {ENV_VAR} to a folder you can write",
        ) from exc
    return Workspace(root.resolve())
