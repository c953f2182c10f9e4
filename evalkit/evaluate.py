"""Run a suite on a model: every task's per-example rows into one run in the store.

The run is created as ``running``; each task's rows are written as the task finishes, and the
run is marked ``complete`` only at the end. A run that fails is marked ``failed``; one killed
outright stays ``running``. Neither is ever read as a result, and its generations, cached as
they were made, are reused by the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from evalkit.provenance import code_version, model_lineage
from evalkit.results import add_results, create_run, finish_run, get_run
from evalkit.store import open_store
from evalkit.suite import Suite, load_examples, load_suite
from evalkit.tasks import RunContext, summarize, task_type

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteRun:
    """A complete run: its id, its record in the store, and the responses it queued for rating
    (None where the suite asks for no rating sample)."""

    run_id: str
    run: dict
    queued: int | None

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
        return "\n".join(lines)


def run_suite(
    suite: str | Path | Suite,
    model_path: str | Path,
    store: Path,
    *,
    name: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> SuiteRun:
    """Evaluate the model on every task of the suite into one complete run in the store."""
    from evalkit.generation import CacheContext
    from evalkit.models import load_model
    from evalkit.provenance import chat_template_fingerprint, model_hash

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    model_path = Path(model_path).resolve()
    datasets = {t.dataset for t in suite.tasks if t.dataset}
    examples = {d: load_examples(suite.datasets[d]) for d in sorted(datasets)}
    needs_template = any(
        task_type(t.type).needs_template or any(e.messages for e in examples.get(t.dataset, []))
        for t in suite.tasks
    )
    model, tokenizer = load_model(model_path, device=device, require_chat_template=needs_template)
    identity = {
        "model_path": str(model_path),
        "model_hash": model_hash(model_path),
        "chat_template_fingerprint": chat_template_fingerprint(tokenizer),
    }
    cache = CacheContext(store, identity["model_hash"], identity["chat_template_fingerprint"])
    with open_store(store) as con:
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
    context = RunContext(model, tokenizer, batch_size, cache, suite.seed)
    summary: dict = {}
    try:
        for task in suite.tasks:
            run = task_type(task.type).run
            if run is None:
                continue  # acts once the run is complete (rating samples)
            results = run(context, task, examples.get(task.dataset, []))
            summary[task.name] = summarize(task, results)
            with open_store(store) as con:
                add_results(con, run_id, results)
            log.info("task %s: %s", task.name, summary[task.name])
    except BaseException:
        with open_store(store) as con:
            finish_run(con, run_id, summary=summary, status="failed")
        raise
    summary["cached_generations"] = cache.hits
    with open_store(store) as con:
        finish_run(con, run_id, summary=summary)
    samples = any(t.type == "rating_sample" for t in suite.tasks)
    queued = queue_rating_samples(store, run_id, suite) if samples else None
    with open_store(store) as con:
        return SuiteRun(run_id, get_run(con, run_id), queued)


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
