"""Task types: the one registry of what a suite's ``[[tasks]]`` can be.

Each type states the keys it takes in a suite and checks their values, runs on a model into
per-example rows, names the run-level metrics of those rows, and adds what its summary needs
beyond them. A new task type is one :class:`TaskType` in :data:`TASK_TYPES`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from evalkit.chat import assistant_masks
from evalkit.distributed import Shard
from evalkit.errors import EvalkitError, unknown_name
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
from evalkit.results import ExampleResult

log = logging.getLogger(__name__)

PERPLEXITY_SCOPES = ("assistant", "all")
BIAS_KINDS = ("likelihood", "generation")


@dataclass(frozen=True)
class Example:
    """One example of a dataset: a conversation, or a text."""

    id: str
    messages: list[dict] | None
    text: str | None
    metadata: dict


@dataclass
class RunContext:
    """What every task of one suite run shares: the model, its tokenizer, the generation cache."""

    model: Any
    tokenizer: Any
    batch_size: int
    cache: Any  # evalkit.generation.CacheContext
    seed: int  # the suite's
    progress: bool = False  # a bar per task where stderr is a terminal (tqdm decides)
    shard: Shard = field(default_factory=Shard)  # the processes of a torchrun launch


def _conversation_parts(example: Example) -> tuple[list[dict], str | None]:
    """The prompt (turns before the last assistant turn) and the reference (that turn)."""
    messages = example.messages or []
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


def run_perplexity(ctx: RunContext, task, examples: list[Example]) -> list[ExampleResult]:
    """Per-example NLL: of the text, or of a conversation's assistant turns given their context
    (masked as in training; ``scope = "all"`` scores every token)."""
    from evalkit.perplexity import (
        ExampleNLL,
        byte_count,
        context_length,
        sequence_nll,
        text_nll,
        word_count,
    )

    model, tokenizer, batch_size = ctx.model, ctx.tokenizer, ctx.batch_size
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
            progress=ctx.progress,
            shard=ctx.shard,
        )
        scored.update({e.id: (n, e.text) for e, n in zip(texts, nlls)})
    if convs:
        _require_template(tokenizer)
        conversations = [e.messages for e in convs]
        ids = tokenizer.apply_chat_template(conversations, return_dict=True)["input_ids"]
        every_token = task.params.get("scope", "assistant") == "all"
        if every_token:
            masks = [[True] * len(i) for i in ids]
        else:
            masks = [[bool(m) for m in mask] for mask in assistant_masks(tokenizer, conversations)]
        scores = sequence_nll(
            model,
            ids,
            max_length=max_length,
            stride=stride,
            batch_size=batch_size,
            progress=ctx.progress,
            shard=ctx.shard,
            target_masks=masks,
        )
        for e, tokens, (nll, count) in zip(convs, ids, scores):
            # Words and bytes of what is scored: the whole rendering, or the replies' content
            # (the template's text around a reply is not the assistant's words).
            if every_token:
                texts = [tokenizer.decode(tokens[1:])]
            else:
                texts = [m["content"] for m in e.messages if m["role"] == "assistant"]
            words, nbytes = sum(map(word_count, texts)), sum(map(byte_count, texts))
            scored[e.id] = (ExampleNLL(nll, count, words, nbytes), "\n".join(texts))
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


def run_generation(ctx: RunContext, task, examples: list[Example]) -> list[ExampleResult]:
    """Generate a response per conversation; score it against its reference and the control."""
    from evalkit.generation import decoding_config, generate

    model, tokenizer, batch_size, cache = ctx.model, ctx.tokenizer, ctx.batch_size, ctx.cache
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
    outputs = generate(
        model,
        tokenizer,
        list(prompts),
        config,
        batch_size=batch_size,
        cache=cache,
        progress=ctx.progress,
        shard=ctx.shard,
    )
    hyps = [o.text for o in outputs]
    scores = score_generations(
        hyps, [o.finish_reason for o in outputs], list(references), wanted, ctx.seed
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


def run_bias(ctx: RunContext, task, examples: list[Example]) -> list[ExampleResult]:
    """Bias probes: minimal pairs by likelihood (``kind = "likelihood"``, the default), or
    prompt pairs by generation (``kind = "generation"``, with the task's decoding parameters).
    The probes come from the task's probe file, not from a dataset."""
    from evalkit.bias import generation_probe, likelihood_probe, load_probes

    model, tokenizer, batch_size, cache = ctx.model, ctx.tokenizer, ctx.batch_size, ctx.cache
    probes = load_probes(task.params["probes"])
    kind = task.params.get("kind", "likelihood")
    if kind == "likelihood":
        if not probes.pairs:
            raise EvalkitError(f"task {task.name}: {probes.name} holds no sentence pairs")
        return likelihood_probe(
            model,
            tokenizer,
            probes.pairs,
            batch_size=batch_size,
            task=task.name,
            progress=ctx.progress,
            shard=ctx.shard,
        )
    if kind == "generation":
        from evalkit.generation import decoding_config, generate

        if not probes.prompts:
            raise EvalkitError(f"task {task.name}: {probes.name} holds no prompt pairs")
        config = decoding_config(task.params)

        def respond(prompts: list[list[dict]]) -> list[str]:
            outputs = generate(
                model,
                tokenizer,
                prompts,
                config,
                batch_size=batch_size,
                cache=cache,
                progress=ctx.progress,
                shard=ctx.shard,
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


# --- what each type takes, gives and adds to the summary ----------------------------------------


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _decoding_keys() -> set[str]:
    from evalkit.generation import DecodingConfig

    return {f.name for f in fields(DecodingConfig)}


def _check_decoding(params: dict) -> None:
    from evalkit.generation import decoding_config

    decoding_config(params)


def _check_perplexity(task, others: Sequence) -> None:
    params = task.params
    for key in ("max_length", "stride"):
        if key in params and not _positive_int(params[key]):
            raise EvalkitError(f"{key} {params[key]!r} is not a whole number >= 1")
    if params.get("scope", "assistant") not in PERPLEXITY_SCOPES:
        raise EvalkitError(
            f"scope {params['scope']!r}", hint=f"use {' or '.join(PERPLEXITY_SCOPES)}"
        )


def _check_generation(task, others: Sequence) -> None:
    params = task.params
    metrics = params.get("metrics", [])
    if not isinstance(metrics, list) or not set(metrics) <= set(GENERATION_METRICS):
        raise EvalkitError(
            f"metrics {metrics!r}", hint=f"a list of {', '.join(GENERATION_METRICS)}"
        )
    _check_decoding(params)


def _check_bias(task, others: Sequence) -> None:
    params = task.params
    if params.get("kind", "likelihood") not in BIAS_KINDS:
        raise EvalkitError(f"kind {params['kind']!r}", hint=" or ".join(BIAS_KINDS))
    _check_decoding(params)


def _check_rating_sample(task, others: Sequence) -> None:
    """A rating sample needs generated responses on its dataset (``others`` are the suite's
    tasks), and its keys are the queue's selection."""
    from evalkit.rating.sources import Selection

    if not any(t.type == "generation" and t.dataset == task.dataset for t in others):
        raise EvalkitError(
            f"it samples dataset {task.dataset!r} for rating, but no generation task runs on it",
            hint="add a [[tasks]] of type generation on that dataset",
        )
    try:
        Selection(**task.params)
    except TypeError as exc:
        raise EvalkitError(str(exc)) from None


def _bias_metrics(task: dict, columns: set[str]) -> list[RunMetric]:
    return [
        mean_metric(name, higher_is_better=None)
        for name in sorted(columns)
        if name.startswith(("stereo_preferred", "margin_")) or name.endswith("_diff")
    ]


def _generation_metrics(task: dict, columns: set[str]) -> list[RunMetric]:
    widths = {m: sum(c.startswith(f"{m}.") for c in columns) for m in REFERENCE_METRICS}
    names = [m for m in REFERENCE_METRICS if widths[m]]
    names += [m for m in ("exact_match", "length") if m in columns]
    return generation_metrics(names, widths)


def _bias_summary(results: list[ExampleResult], columns: set[str]) -> dict:
    from evalkit.bias import bias_summary

    primary = "stereo_preferred_shared" if "stereo_preferred_shared" in columns else None
    primary = primary or next((c for c in sorted(columns) if c.endswith("_diff")), None)
    return {"by_category": bias_summary(results, primary)} if primary else {}


def _generation_summary(results: list[ExampleResult], columns: set[str]) -> dict:
    return {
        "signatures": {m: signature(m) for m in REFERENCE_METRICS if f"{m}.0" in columns},
        "flagged": {f: int(sum(r.scores[f] for r in results)) for f in DEGENERATION_FLAGS},
    }


@dataclass(frozen=True)
class TaskType:
    """One kind of task. ``params()`` names what it takes in a suite (beyond type, dataset, name);
    ``check(task, tasks)`` raises on a bad value; ``run(context, task, examples)`` gives the
    per-example rows (None: the type acts once the run is complete); ``metrics(task, columns)``
    the run-level metrics; ``summary(results, columns)`` what the summary adds beyond them."""

    name: str
    params: Callable[[], set[str]]
    check: Callable[[Any, Sequence], None]
    run: Callable[[RunContext, Any, list[Example]], list[ExampleResult]] | None = None
    metrics: Callable[[dict, set[str]], list[RunMetric]] = lambda task, columns: []
    summary: Callable[[list[ExampleResult], set[str]], dict] = lambda results, columns: {}
    needs_dataset: bool = True
    needs_template: bool = False  # renders conversations whatever its dataset holds


TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in (
        TaskType(
            "perplexity",
            lambda: {"max_length", "stride", "scope"},
            _check_perplexity,
            run_perplexity,
            lambda task, columns: perplexity_metrics(),
        ),
        TaskType(
            "generation",
            lambda: _decoding_keys() | {"metrics"},
            _check_generation,
            run_generation,
            _generation_metrics,
            _generation_summary,
            needs_template=True,
        ),
        TaskType(
            "bias",
            lambda: _decoding_keys() | {"probes", "kind"},
            _check_bias,
            run_bias,
            _bias_metrics,
            _bias_summary,
            needs_dataset=False,
            needs_template=True,
        ),
        TaskType(
            "rating_sample",
            lambda: {"kind", "slice_field", "per_slice", "seed", "priority", "overlap"},
            _check_rating_sample,
        ),
    )
}


def task_type(name) -> TaskType:
    """The registered type of that name; an unknown name is an error with a suggestion."""
    if name not in TASK_TYPES:
        raise unknown_name("task type", name, TASK_TYPES)
    return TASK_TYPES[name]


def metrics_of(task: dict, columns: set[str]) -> list[RunMetric]:
    """The run-level metrics of a task (as stored with the run) given its score columns."""
    return task_type(task["type"]).metrics(task, columns)


def summarize(task, results: list[ExampleResult]) -> dict:
    """A task's summary: its examples, each run-level metric, and what its type adds."""
    columns = set().union(*(r.scores for r in results))
    out = {"examples": len(results)}
    for metric in metrics_of({"type": task.type, **task.params}, columns):
        table = np.array([[r.scores[c] for c in metric.columns] for r in results])
        out[metric.name] = metric.value(table)
    return out | task_type(task.type).summary(results, columns)
