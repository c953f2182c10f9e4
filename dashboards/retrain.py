"""The loop's next turn: a training set from feedback, its training in the background, the
evaluation and gate of the new model against the current one, and the history of the loop.

The training set comes from three kinds of feedback: annotators' corrections, pairwise
preferences (the answer a majority chose), and production exchanges whose answer a user
corrected. Low-rated exchanges without a correction are counted, not trained on: a bad answer
is no target. The conversations go through data preparation (dedup, PII, split), so the
person sees its manifest and report before launching anything.

A launched job is one shell command (train, then ``evalkit eval``, then ``evalkit gate``) in a
session of its own, so it outlives the app's page and process; its pid and run folder are kept
in the store (``retrain_jobs``) and its progress is the run's ``metrics.jsonl``. The command
writes its exit status to ``RUN/exit_code`` when it ends.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from evalkit.accounts import Account, audit, require
from evalkit.errors import EvalkitError
from evalkit.events import conversations
from evalkit.rating.export import dpo_rows, sft_rows
from evalkit.rating.queue import utc_now
from evalkit.rating.report import load_ratings
from evalkit.workspace import write_jsonl
from finetune.data.prepare import PrepareConfig, prepare

SOURCES = ("corrections", "preferences", "production")
EXAMPLES = 3  # shown per source
JOBS = """CREATE TABLE IF NOT EXISTS retrain_jobs (
    job_id VARCHAR PRIMARY KEY,
    started_at TIMESTAMP NOT NULL,
    started_by VARCHAR NOT NULL,
    pid INTEGER NOT NULL,
    run_dir VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    dataset_hash VARCHAR,
    feedback JSON,
    base VARCHAR NOT NULL,
    baseline_run VARCHAR NOT NULL,
    suite VARCHAR NOT NULL,
    spec VARCHAR NOT NULL,
    command JSON NOT NULL
)"""


@dataclass
class TrainingSet:
    """A prepared dataset folder and what went into it."""

    raw: dict[str, int]  # conversations per source, before preparation
    low_rated_uncorrected: int  # production exchanges rated down with no correction
    examples: dict[str, list[dict]]
    folder: Path
    manifest: dict

    @property
    def report(self) -> str:
        return (self.folder / "report.md").read_text()


def feedback(con: duckdb.DuckDBPyConnection, events_dir: Path | None) -> tuple[dict, int]:
    """The conversations each source gives (messages format, ``source`` and the ids they came
    from in each), and the count of low-rated production exchanges without a correction."""
    records = load_ratings(con)
    corrections = [{**row, "source": "corrections"} for row in sft_rows(records)]
    preferences = [
        {
            "messages": row["prompt"] + row["chosen"],
            "item_id": row["item_id"],
            "rating_ids": row["rating_ids"],
            "source": "preferences",
        }
        for row in dpo_rows(r for r in records if r["choice"])
    ]
    exchanges = []
    if events_dir is not None and any(Path(events_dir).glob("date=*/*.parquet")):
        exchanges = conversations(events_dir)
    production = [{**c, "source": "production"} for c in exchanges if c["corrected"]]
    low = sum(1 for c in exchanges if not c["corrected"] and (c["user_feedback"] or 0) < 0)
    return dict(zip(SOURCES, (corrections, preferences, production))), low


def build_training_set(
    con: duckdb.DuckDBPyConnection,
    account: Account,
    events_dir: Path | None,
    out: Path,
    *,
    model: str | None = None,
    page: str | None = None,
) -> TrainingSet:
    """Write the feedback's conversations to ``out/raw`` and prepare them into ``out/dataset``
    (token lengths by ``model``'s tokenizer when given); the ``retrain`` permission, audited."""
    require(account, "retrain")
    by_source, low = feedback(con, events_dir)
    if not any(by_source.values()):
        raise EvalkitError(
            "no feedback to train on: no correction, preference or corrected exchange yet",
            hint="rate and correct responses on the Rate page first",
        )
    out = Path(out)
    inputs = []
    for source, rows in by_source.items():
        if rows:
            inputs.append(str(out / "raw" / f"{source}.jsonl"))
            write_jsonl(rows, inputs[-1])
    manifest = prepare(inputs, out / "dataset", PrepareConfig(model=model))
    raw = {source: len(rows) for source, rows in by_source.items()}
    audit(
        con,
        account,
        "build_training_set",
        {"folder": str(out), **raw, "dataset_hash": manifest["dataset_hash"]},
        page=page,
    )
    examples = {source: rows[:EXAMPLES] for source, rows in by_source.items()}
    return TrainingSet(raw, low, examples, out / "dataset", manifest)


@dataclass(frozen=True)
class Plan:
    """What a job trains from and how its model is judged."""

    base: str  # the current model's directory: the new one starts from it
    dataset: str  # a prepared dataset folder
    baseline_run: str  # the current model's evaluation run
    suite: str  # the suite file that run used
    spec: str  # the gate spec
    max_steps: int | None = None  # None: the training's own (one epoch)

    def __post_init__(self) -> None:
        for name in ("base", "dataset", "suite", "spec"):
            if not Path(getattr(self, name)).exists():
                raise EvalkitError(f"{name} {getattr(self, name)!r} does not exist")
        if self.max_steps is not None and self.max_steps < 1:
            raise EvalkitError(f"max steps {self.max_steps}: must be at least 1")


def job_command(job_id: str, plan: Plan, run_dir: Path, workspace: Path) -> list[str]:
    """The job's command line: train, evaluate the model as run ``job_id``, gate it against
    the baseline run; the exit status goes to ``run_dir/exit_code``."""
    evalkit = [sys.executable, "-m", "evalkit.cli", "--workspace", str(workspace)]
    steps = ["--max-steps", str(plan.max_steps)] if plan.max_steps else []
    train = ["finetune", "train", "--base", plan.base, "--data", plan.dataset, "--out"]
    model = str(run_dir / "model")
    chain = [
        [*evalkit, *train, str(run_dir), *steps],
        [*evalkit, "eval", "--suite", plan.suite, "--model", model, "--name", job_id],
        [*evalkit, "gate", "--baseline", plan.baseline_run, "--candidate", job_id,
         "--spec", plan.spec],
    ]  # fmt: skip
    line = " && ".join(shlex.join(c) for c in chain)
    return ["sh", "-c", f"{line}; echo $? > {shlex.quote(str(run_dir / 'exit_code'))}"]


def launch(
    con: duckdb.DuckDBPyConnection,
    account: Account,
    plan: Plan,
    workspace: Path,
    *,
    page: str | None = None,
) -> dict:
    """Start a job in the background (a session of its own: it outlives the page and the
    app), record it and audit it; returns its record."""
    require(account, "retrain")
    con.execute(JOBS)
    job_id = f"retrain-{utc_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    run_dir = Path(workspace) / "runs" / job_id
    run_dir.mkdir(parents=True)
    command = job_command(job_id, plan, run_dir, workspace)
    manifest_file = Path(plan.dataset) / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    # Conversations kept from each source: what this model learns from.
    sources = {Path(f["path"]).stem: f["kept"] for f in manifest.get("inputs", [])}
    with open(run_dir / "job.log", "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    job = {
        "job_id": job_id,
        "started_at": utc_now(),
        "started_by": account.name,
        "pid": process.pid,
        "run_dir": str(run_dir),
        "dataset": plan.dataset,
        "dataset_hash": manifest.get("dataset_hash"),
        "feedback": json.dumps(sources),
        "base": plan.base,
        "baseline_run": plan.baseline_run,
        "suite": plan.suite,
        "spec": plan.spec,
        "command": json.dumps(command),
    }
    con.execute(
        f"INSERT INTO retrain_jobs VALUES ({', '.join('?' * len(job))})", list(job.values())
    )
    audit(con, account, "retrain", {"job_id": job_id, **asdict(plan)}, page=page)
    return job


def _alive(pid: int) -> bool:
    """Whether the process still runs; reaps it when it is this process's child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:  # started by another process of the app: ask the system
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def progress(run_dir: Path) -> list[dict]:
    """The training's lines of ``metrics.jsonl`` so far (step, loss, val_loss, ...)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line being written
            break
    return rows


def _verdict(con: duckdb.DuckDBPyConnection, job_id: str) -> str | None:
    """The verdict of the gate of the job's evaluation run (named ``job_id``), if reached."""
    from evalkit.gate.report import REPORTS_SCHEMA
    from evalkit.results import ensure_schema

    ensure_schema(con)
    con.execute(REPORTS_SCHEMA)
    row = con.execute(
        "SELECT g.verdict FROM gate_reports g JOIN eval_runs r ON r.run_id = g.candidate_run "
        "WHERE r.name = ? ORDER BY g.created_at DESC LIMIT 1",
        [job_id],
    ).fetchone()
    return row[0] if row else None


def job_state(con: duckdb.DuckDBPyConnection, job: dict) -> dict:
    """Where a job is: ``stage`` (training, evaluating, done, failed, stopped), the exit
    status once it ended, the gate's verdict once reached, and the step it trained to."""
    run = Path(job["run_dir"])
    exit_file = run / "exit_code"
    code = int(exit_file.read_text()) if exit_file.is_file() else None
    verdict = _verdict(con, job["job_id"])
    if code is None:
        if _alive(job["pid"]):
            stage = "evaluating" if (run / "model").is_dir() else "training"
        else:
            stage = "stopped"
    elif verdict is not None:
        stage = "done"  # the gate ran: its exit status is the verdict's, not a failure
    else:
        stage = "failed"
    steps = progress(run)
    return {
        "stage": stage,
        "exit_code": code,
        "verdict": verdict,
        "step": steps[-1]["step"] if steps else 0,
        "max_steps": _max_steps(run),
    }


def _max_steps(run: Path) -> int | None:
    config = run / "config.json"
    return json.loads(config.read_text()).get("max_steps") if config.is_file() else None


def jobs(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every job, newest first."""
    con.execute(JOBS)
    cursor = con.execute("SELECT * FROM retrain_jobs ORDER BY started_at DESC")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def stop(
    con: duckdb.DuckDBPyConnection, account: Account, job: dict, *, page: str | None = None
) -> None:
    """Stop a running job (SIGTERM to its session: training checkpoints and stops)."""
    require(account, "retrain")
    try:
        os.killpg(job["pid"], signal.SIGTERM)
    except ProcessLookupError:
        raise EvalkitError(f"job {job['job_id']} is not running") from None
    audit(con, account, "stop_retrain", {"job_id": job["job_id"]}, page=page)


def history(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The loop: for each job, the feedback it trained on (conversations per source file),
    its dataset, the model it made and the gate's verdict."""
    rows = []
    for job in jobs(con):
        state = job_state(con, job)
        model = Path(job["run_dir"]) / "model"
        rows.append(
            {
                "job": job["job_id"],
                "started": job["started_at"],
                "by": job["started_by"],
                "feedback": ", ".join(
                    f"{n} {source}" for source, n in json.loads(job["feedback"] or "{}").items()
                ),
                "dataset": (job["dataset_hash"] or "")[:12],
                "model": str(model) if model.is_dir() else "",
                "baseline": job["baseline_run"],
                "stage": state["stage"],
                "verdict": state["verdict"] or "",
            }
        )
    return rows
