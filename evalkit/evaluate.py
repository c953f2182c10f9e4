"""Run a suite on a model: every task's per-example rows into one run in the store.

The run is created as ``running``; each task's rows are written as the task finishes, and the
run is marked ``complete`` only at the end. A run that fails is marked ``failed``; one killed
outright stays ``running``. Neither is ever read as a result, and its generations, cached as
they were made, are reused by the next run.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from evalkit.chat import assistant_masks
from evalkit.errors import EvalkitError
from evalkit.metrics import (
    DEGENERATION_FLAGS,
    GENERATION_METRICS,
    REFERENCE_METRICS,
    RunMetric,
    corpus_from_stats,
    degeneration,
    derangement,
    exact_match,
    generation_metrics,
    mean_metric,
    perplexity_metrics,
    sentence_stats,
    signature,
    stats_columns,
)
from evalkit.provenance import code_version, model_lineage
from evalkit.results import ExampleResult, add_results, create_run, finish_run
from evalkit.store import open_store
from evalkit.suite import Example, Suite, TaskSpec, load_examples, load_suite

log = logging.getLogger(__name__)


# --- tasks -----------------------------------------------------------------------------------


def _conversation_parts(example: Example) -> tuple[list[dict], str | None]:
    """The prompt (turns before the last assistant turn) and the reference (that turn)."""
    messages = example.messages or []
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


def run_perplexity(model, tokenizer, task: TaskSpec, examples: list[Example], batch_size: int):
    """Per-example NLL: of the text, or of a conversation's assistant turns given their context
    (masked as in training; ``scope = "all"`` scores every token)."""
    from evalkit.perplexity import ExampleNLL, context_length, sequence_nll, text_nll

    context = context_length(model, tokenizer)
    max_length = task.params.get("max_length") or context
    stride = task.params.get("stride")
    if max_length > context or (stride or 0) > max_length:
        raise EvalkitError(
            f"task {task.name}: max_length {max_length}, stride {stride}",
            hint=f"max_length at most the model's context ({context}), stride at most max_length",
        )
    texts = [e for e in examples if e.messages is None]
    convs = [e for e in examples if e.messages is not None]
    scored: dict[str, tuple[ExampleNLL, str]] = {}
    if texts:
        nlls = text_nll(
            model,
            tokenizer,
            [e.text for e in texts],
            max_length=max_length,
            stride=stride,
            batch_size=batch_size,
        )
        scored.update({e.id: (n, e.text) for e, n in zip(texts, nlls)})
    if convs:
        _require_template(tokenizer)
        conversations = [e.messages for e in convs]
        ids = tokenizer.apply_chat_template(conversations, return_dict=True)["input_ids"]
        if task.params.get("scope", "assistant") == "all":
            masks = [[True] * len(i) for i in ids]
        else:
            masks = [[bool(m) for m in mask] for mask in assistant_masks(tokenizer, conversations)]
        scores = sequence_nll(
            model,
            ids,
            max_length=max_length,
            stride=stride,
            batch_size=batch_size,
            target_masks=masks,
        )
        for e, tokens, mask, (nll, count) in zip(convs, ids, masks, scores):
            target = tokenizer.decode([t for t, m in zip(tokens[1:], mask[1:]) if m])
            words = len(re.split(r"\s+", target))
            scored[e.id] = (ExampleNLL(nll, count, words, len(target.encode("utf-8"))), target)
    results = []
    for e in examples:
        n, target = scored[e.id]
        if n.tokens == 0:
            raise EvalkitError(
                f"perplexity: example {e.id} has no token to score (no assistant turn?)",
                hint='remove it, or set scope = "all" on the task',
            )
        results.append(
            ExampleResult(
                task.name,
                e.id,
                {"nll": n.nll, "tokens": n.tokens, "words": n.words, "bytes": n.bytes},
                e.metadata,
                prompt=json.dumps(e.messages, ensure_ascii=False) if e.messages else None,
                reference=target,
            )
        )
    return results


def run_generation(model, tokenizer, task, examples, batch_size, cache, seed):
    """Generate a response per conversation; score it against its reference and the control."""
    from evalkit.generation import decoding_config, generate

    _require_template(tokenizer)
    if any(e.messages is None for e in examples):
        raise EvalkitError(f"task {task.name}: generation needs conversations, not plain texts")
    prompts, references = zip(*(_conversation_parts(e) for e in examples))
    wanted = task.params.get("metrics")
    has_refs = all(r is not None for r in references)
    if wanted is None:
        wanted = list(GENERATION_METRICS) if has_refs else ["length"]
        if not has_refs:
            log.warning(
                "task %s: not every example has a reference; no reference metrics", task.name
            )
    needs_refs = [m for m in wanted if m != "length"]
    if needs_refs and not has_refs:
        missing = next(e.id for e, r in zip(examples, references) if r is None)
        raise EvalkitError(
            f"task {task.name}: example {missing} does not end with an assistant turn, so "
            f"{', '.join(needs_refs)} have no reference",
            hint='end every conversation with the reference answer, or set metrics = ["length"]',
        )
    if needs_refs and len(examples) < 2:
        raise EvalkitError(
            f"task {task.name}: dataset {task.dataset} has one example, and the content control "
            "scores each response against another example's reference",
            hint='give the dataset at least two examples, or set metrics = ["length"]',
        )
    config = decoding_config(task.params)
    outputs = generate(model, tokenizer, list(prompts), config, batch_size=batch_size, cache=cache)
    hyps = [o.text for o in outputs]
    scores = score_generations(
        hyps, [o.finish_reason for o in outputs], list(references), wanted, seed
    )
    return [
        ExampleResult(
            task.name,
            e.id,
            s,
            e.metadata,
            prompt=json.dumps(p, ensure_ascii=False),
            reference=r,
            output=h,
        )
        for e, p, r, h, s in zip(examples, prompts, references, hyps, scores)
    ]


def score_generations(
    hypotheses: list[str],
    finish_reasons: list[str],
    references: list[str | None],
    metrics: list[str],
    seed: int,
) -> list[dict[str, float]]:
    """Per-response scores: degeneration flags and length, and for each reference metric
    sacrebleu's sufficient statistics and sentence score, against the own reference and
    against a seeded derangement of the references (the content control)."""
    scores = [
        degeneration(h, f) | {"length": float(len(h.split()))}
        for h, f in zip(hypotheses, finish_reasons)
    ]
    if not any(m != "length" for m in metrics):
        return scores
    wrong = [references[j] for j in derangement(len(references), seed)]
    for name in (m for m in metrics if m in REFERENCE_METRICS):
        for control, against in ((False, references), (True, wrong)):
            stats = sentence_stats(name, hypotheses, against)
            columns = stats_columns(name, stats.shape[1], control)
            sentence = f"{name}_control_sentence" if control else f"{name}_sentence"
            for s, row, value in zip(scores, stats, corpus_from_stats(name, stats)):
                s.update(zip(columns, row.tolist()))
                s[sentence] = float(value)
    if "exact_match" in metrics:
        for s, h, r in zip(scores, hypotheses, references):
            s["exact_match"] = exact_match(h, r)
    return scores


def run_bias(model, tokenizer, task: TaskSpec, batch_size: int, cache) -> list[ExampleResult]:
    """Bias probes: minimal pairs by likelihood (``kind = "likelihood"``, the default), or
    prompt pairs by generation (``kind = "generation"``, with the task's decoding parameters)."""
    from evalkit.bias import generation_probe, likelihood_probe, load_probes

    probes = load_probes(task.params["probes"])
    kind = task.params.get("kind", "likelihood")
    if kind == "likelihood":
        if not probes.pairs:
            raise EvalkitError(f"task {task.name}: {probes.name} holds no sentence pairs")
        return likelihood_probe(
            model, tokenizer, probes.pairs, batch_size=batch_size, task=task.name
        )
    if kind == "generation":
        from evalkit.generation import decoding_config, generate

        if not probes.prompts:
            raise EvalkitError(f"task {task.name}: {probes.name} holds no prompt pairs")
        config = decoding_config(task.params)

        def respond(prompts: list[list[dict]]) -> list[str]:
            outputs = generate(
                model, tokenizer, prompts, config, batch_size=batch_size, cache=cache
            )
            return [o.text for o in outputs]

        return generation_probe(respond, probes.prompts, task=task.name)
    raise EvalkitError(f"task {task.name}: unknown kind {kind!r}", hint="likelihood or generation")


def _require_template(tokenizer) -> None:
    if not tokenizer.chat_template:
        raise EvalkitError(
            "this task renders conversations, and the model's tokenizer has no chat template",
            hint="set tokenizer.chat_template and save the model again",
        )


def metrics_of(task: dict, columns: set[str]) -> list[RunMetric]:
    """The run-level metrics of a task (as stored with the run) given its score columns."""
    if task["type"] == "perplexity":
        return perplexity_metrics()
    if task["type"] == "bias":
        return [
            mean_metric(name, higher_is_better=None)
            for name in sorted(columns)
            if name.startswith(("stereo_preferred", "margin_")) or name.endswith("_diff")
        ]
    if task["type"] == "generation":
        widths = {m: sum(c.startswith(f"{m}.") for c in columns) for m in REFERENCE_METRICS}
        names = [m for m in REFERENCE_METRICS if widths[m]]
        names += [m for m in ("exact_match", "length") if m in columns]
        return generation_metrics(names, widths)
    raise EvalkitError(f"unknown task type {task['type']!r}")


def _summary(task: TaskSpec, results: list[ExampleResult]) -> dict:
    columns = set().union(*(r.scores for r in results))
    out = {"examples": len(results)}
    for metric in metrics_of({"type": task.type, **task.params}, columns):
        table = np.array([[r.scores[c] for c in metric.columns] for r in results])
        out[metric.name] = metric.value(table)
    if task.type == "bias":
        from evalkit.bias import bias_summary

        primary = "stereo_preferred_shared" if "stereo_preferred_shared" in columns else None
        primary = primary or next((c for c in sorted(columns) if c.endswith("_diff")), None)
        if primary:
            out["by_category"] = bias_summary(results, primary)
    if task.type == "generation":
        out["signatures"] = {m: signature(m) for m in REFERENCE_METRICS if f"{m}.0" in columns}
        out["flagged"] = {f: int(sum(r.scores[f] for r in results)) for f in DEGENERATION_FLAGS}
    return out


# --- the run ---------------------------------------------------------------------------------


def run_suite(
    suite: str | Path | Suite,
    model_path: str | Path,
    store: Path,
    *,
    name: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> str:
    """Evaluate the model on every task of the suite; returns the id of the complete run."""
    from evalkit.generation import CacheContext
    from evalkit.models import load_model
    from evalkit.provenance import chat_template_fingerprint, model_hash

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    model_path = Path(model_path).resolve()
    datasets = {t.dataset for t in suite.tasks if t.dataset}
    examples = {d: load_examples(suite.datasets[d]) for d in sorted(datasets)}
    needs_template = any(
        t.type in ("generation", "bias") or any(e.messages for e in examples.get(t.dataset, []))
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
    summary: dict = {}
    try:
        for task in suite.tasks:
            rows = examples.get(task.dataset, [])
            if task.type == "rating_sample":
                continue  # queued once the run is complete
            if task.type == "perplexity":
                results = run_perplexity(model, tokenizer, task, rows, batch_size)
            elif task.type == "bias":
                results = run_bias(model, tokenizer, task, batch_size, cache)
            else:
                results = run_generation(
                    model, tokenizer, task, rows, batch_size, cache, suite.seed
                )
            summary[task.name] = _summary(task, results)
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
    queue_rating_samples(store, run_id, suite)
    return run_id


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
