"""Run a suite on a model: every task's per-example rows into one run in the store.

The run is created as ``running``; each task's rows are written as the task finishes, and the
run is marked ``complete`` only at the end. A run that fails is marked ``failed``; one killed
outright stays ``running``. Neither is ever read as a result, and its generations, cached as
they were made, are reused by the next run.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from evalkit.provenance import code_version, model_lineage
from evalkit.results import add_results, create_run, finish_run, get_run, latest_complete
from evalkit.store import open_store
from evalkit.suite import Suite, load_examples, load_suite
from evalkit.tasks import RunContext, summarize, task_type

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteRun:
    """A complete run: its id, its record in the store, the responses it queued for rating
    (None where the suite asks for no rating sample), and the run its name meant before."""

    run_id: str
    run: dict
    queued: int | None
    superseded: str | None = None

    def describe(self) -> str:
        """The run and each task's figures, for the terminal."""
        run = self.run
        lines = [
            f"run {self.run_id} complete ({run['suite_name']}, model {run['model_hash'][:12]})"
        ]
        for task, values in run["summary"].items():
            if isinstance(values, dict):
                shown = (f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float | int))
                lines.append(f"  {task}: {', '.join(shown)}")
        if self.queued is not None:
            lines.append(f"  queued {self.queued} responses for rating (`evalkit rate status`)")
        if self.superseded:
            lines.append(
                f"  the name {run['name']!r} now means this run instead of {self.superseded} "
                "(`evalkit runs rename` or `evalkit runs rm` to tidy up)"
            )
        return "\n".join(lines)


def run_suite(
    suite: str | Path | Suite,
    model_path: str | Path,
    store: Path,
    *,
    name: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = False,
) -> SuiteRun | None:
    """Evaluate the model on every task of the suite into one complete run in the store.

    Under torchrun (``torchrun --nproc_per_node N -m evalkit.cli eval ...``) the processes
    share the model calls (:mod:`evalkit.distributed`) and give the run one process gives;
    rank 0 writes it and returns it, the other processes write nothing and return None.

    ``progress``: a line on stderr as each task starts and ends, and the task's bar when stderr
    is a terminal (a log gets the lines only).
    """
    from evalkit.distributed import start
    from evalkit.generation import CacheContext
    from evalkit.models import load_model
    from evalkit.provenance import chat_template_fingerprint, model_hash

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    shard, device = start(device)
    progress = progress and shard.writes
    model_path = Path(model_path).resolve()
    datasets = {t.dataset for t in suite.tasks if t.dataset}
    examples = {d: load_examples(suite.datasets[d]) for d in sorted(datasets)}
    needs_template = any(
        task_type(t.type).needs_template or any(e.messages for e in examples.get(t.dataset, []))
        for t in suite.tasks
    )
    model, tokenizer = load_model(
        model_path, device=str(device), require_chat_template=needs_template
    )
    identity = {
        "model_path": str(model_path),
        "model_hash": model_hash(model_path),
        "chat_template_fingerprint": chat_template_fingerprint(tokenizer),
    }
    cache = CacheContext(store, identity["model_hash"], identity["chat_template_fingerprint"])
    superseded = run_id = None
    if shard.writes:
        with open_store(store) as con:
            superseded = latest_complete(con, name) if name else None
            run_id = create_run(
                con,
                name=name,
                suite_name=suite.name,
                suite_hash=suite.hash(),
                suite=suite.definition,
                code_version=code_version(),
                lineage=model_lineage(model_path),
                **identity,
            )
    context = RunContext(model, tokenizer, batch_size, cache, suite.seed, progress, shard)
    # rating samples act once the run is complete
    running = [t for t in suite.tasks if task_type(t.type).run is not None]
    summary: dict = {}
    try:
        for number, task in enumerate(running, start=1):
            todo = examples.get(task.dataset, [])
            started = time.perf_counter()
            if progress:
                on = f" on {task.dataset}, {len(todo)} examples" if task.dataset else ""
                _say(f"task {number}/{len(running)} {task.name}: {task.type}{on}")
            results = task_type(task.type).run(context, task, todo)
            summary[task.name] = summarize(task, results)
            if shard.writes:
                with open_store(store) as con:
                    add_results(con, run_id, results)
            log.info("task %s: %s", task.name, summary[task.name])
            if progress:
                seconds = time.perf_counter() - started
                _say(f"task {number}/{len(running)} {task.name}: done in {seconds:.1f} s")
    except BaseException:
        if shard.writes:
            with open_store(store) as con:
                finish_run(con, run_id, summary=summary, status="failed")
        raise
    if not shard.writes:
        return None
    summary["cached_generations"] = cache.hits
    with open_store(store) as con:
        finish_run(con, run_id, summary=summary)
    samples = any(t.type == "rating_sample" for t in suite.tasks)
    queued = queue_rating_samples(store, run_id, suite) if samples else None
    with open_store(store) as con:
        return SuiteRun(run_id, get_run(con, run_id), queued, superseded)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def queue_rating_samples(store: Path, run_id: str, suite: Suite) -> int:
    """Queue the samples for human rating that the suite asks of a complete run.

    Each ``rating_sample`` task draws from the responses of the generation tasks on its dataset;
    the items' batch is the run id. Returns how many items were new.
    """
    from evalkit.rating.queue import add_items
    from evalkit.rating.sources import Selection, items_from_run

    added = 0
    for task in suite.tasks:
        if task.type != "rating_sample":
            continue
        generating = [
            t.name for t in suite.tasks if t.type == "generation" and t.dataset == task.dataset
        ]
        selection = Selection(**{"seed": suite.seed, **task.params})
        with open_store(store) as con:
            items = items_from_run(con, run_id, selection, tasks=generating)
            added += add_items(con, items, batch=run_id)
        log.info("task %s: queued %d items for rating", task.name, len(items))
    return added
