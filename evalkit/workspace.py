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

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError

ENV_VAR = "EVALKIT_WORKSPACE"
DEFAULT_DIR = ".evalkit"
SUBDIRS = ("models", "datasets", "runs", "events", "reports")


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

    @property
    def drift_dir(self) -> Path:
        """The drift job's embeddings cache, topic classifier and flags (evalkit.events)."""
        return self.root / "drift"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"


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


def path_error(exc: OSError, path: str | os.PathLike | None = None) -> EvalkitError:
    """The message for an OSError on a path: which path, and what is in the way.

    ``path`` is what the user asked to write, when known; else the path the error names. A
    file where a folder must be (NotADirectoryError, FileExistsError from mkdir) is named, so
    ``--out notes.txt/x.jsonl`` says that notes.txt is a file. Every command's unexpected
    OSError comes here too (the CLI's main), so no path problem is ever a traceback.
    """
    named = exc.filename2 if exc.filename2 is not None else exc.filename
    target = Path(os.fsdecode(path if path is not None else named))
    prefix = f"cannot write {target}" if path is not None else str(target)
    if isinstance(exc, IsADirectoryError | NotADirectoryError | FileExistsError):
        chain = [target, *target.parents]
        blocker = next((p for p in reversed(chain) if p.exists() and not p.is_dir()), None)
        if isinstance(exc, IsADirectoryError) or blocker is None:
            what = f"{target} is a folder" if target.is_dir() else exc.strerror
            return EvalkitError(f"{prefix}: {what}", hint="give a file name, not a folder")
        return EvalkitError(
            f"{prefix}: {blocker} is a file, so it cannot hold a folder",
            hint="choose another path, or move that file away",
        )
    return EvalkitError(f"{prefix}: {exc.strerror or exc}")


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> int:
    """Write rows one JSON object per line and return how many.

    The rows go to ``PATH.partial``, renamed to ``PATH`` at the end, so a reader never sees
    half a file; a failed write removes the partial file, and a path that cannot be written
    is an EvalkitError naming it.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    count = 0
    try:
        if path.is_dir():  # found before anything is written
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(partial, path)
    except BaseException as exc:
        if partial.parent.is_dir():
            partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is not None:
            raise path_error(exc, path) from exc
        raise
    return count


def atomic_dir(
    final: Path, write: Callable[[Path], None], *, hint: str = "free disk space and try again"
) -> None:
    """Have ``write`` fill a temporary directory, then rename it to ``final``: never half of one.

    A failed write (a full disk shows as ``OSError``, or as ``RuntimeError`` from
    ``torch.save`` and ``SafetensorError`` from safetensors) leaves the previous ``final``
    intact and raises an EvalkitError naming the path and the free space. The temporary names
    carry the process id, so two processes writing the same directory do not collide.
    """
    from safetensors import SafetensorError

    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except (OSError, RuntimeError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            raise path_error(exc, final) from exc  # something in the way, not a full disk
        free = shutil.disk_usage(final.parent if final.parent.exists() else ".").free
        raise EvalkitError(
            f"cannot write {final}: {getattr(exc, 'strerror', None) or exc} "
            f"({free / 2**20:,.0f} MiB free on its disk)",
            hint=hint,
        ) from exc
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)  # renames, not a slow delete, between the two versions
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
