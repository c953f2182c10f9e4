"""Evaluation suites: a TOML file naming datasets and the tasks to run on them.

Example::

    name = "support"

    [datasets.support]
    path = "support_test.jsonl"     # relative to the suite file; conversation JSONL
    limit = 200                     # optional: the first N examples

    [datasets.wiki]
    path = "texts.txt"              # plain text: one example per line (or JSONL with "text")

    [[tasks]]
    type = "perplexity"             # assistant turns given their context, on conversations
    dataset = "support"
    # max_length, stride (sliding windows), scope = "all" (every token, not the assistant's)

    [[tasks]]
    type = "generation"
    dataset = "support"
    max_new_tokens = 64
    repetition_penalty = 1.3
    no_repeat_ngram_size = 3
    # temperature, top_p, top_k, seed; stop = "END" or a list; metrics = ["bleu", "chrf", ...]

    [[tasks]]
    type = "bias"                   # likelihood of minimal pairs; the project's probe set
    # probes = "crows_pairs.csv"    # or a CrowS-Pairs CSV / StereoSet JSON, relative to the suite
    # kind = "generation"           # prompt pairs: length, refusal, sentiment, toxic terms

    [[tasks]]
    type = "rating_sample"          # queue generated responses for human rating, once the run
    dataset = "support"             # is complete: those of the generation tasks on this dataset
    per_slice = 10                  # optional: items drawn per slice (default: all)
    slice_field = "topic"           # optional: the metadata field that makes the slices
    overlap = 2                     # optional: distinct annotators per item (default 1)
    # priority = 0, kind = "single" (or "correction"), seed (default: the suite's)

The suite hash covers the definition and the bytes of every dataset, so two runs share a hash
only when they measured the same thing.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.errors import EvalkitError, check_keys
from evalkit.tasks import Example, task_type

SUITE_KEYS = ("name", "seed", "datasets", "tasks")
DATASET_KEYS = ("path", "limit")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: Path
    limit: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str
    dataset: str | None
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    datasets: dict[str, DatasetSpec]
    tasks: list[TaskSpec]
    seed: int
    definition: dict  # the parsed TOML, stored with every run

    def hash(self) -> str:
        digest = hashlib.sha256(json.dumps(self.definition, sort_keys=True).encode())
        files = [self.datasets[name].path for name in sorted(self.datasets)]
        files += [Path(t.params["probes"]) for t in self.tasks if "probes" in t.params]
        for file in files:
            digest.update(file.name.encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()


def task_name(spec: dict) -> str:
    """A task's name: given, else its type and dataset (``generation:support``)."""
    kind, dataset = spec.get("type"), spec.get("dataset")
    return spec.get("name") or (f"{kind}:{dataset}" if dataset else kind)


def read_toml(path: Path, what: str) -> dict:
    """A TOML file's content; an unreadable or invalid file is the user's error to fix."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise EvalkitError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EvalkitError(f"{what} {path} is not valid TOML: {exc}") from exc


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file: every dataset exists, every task is known."""
    path = Path(path)
    definition = read_toml(path, "suite")
    check_keys(definition, SUITE_KEYS, what="key", where=f"suite {path}")
    datasets = {}
    for name, spec in definition.get("datasets", {}).items():
        if not isinstance(spec, dict):
            raise EvalkitError(f"suite {path}: dataset {name!r} must be a [datasets.{name}] table")
        check_keys(spec, DATASET_KEYS, what="key", where=f"suite {path}: dataset {name!r}")
        if "path" not in spec:
            raise EvalkitError(f"suite {path}: dataset {name!r} has no path")
        data_path = (path.parent / spec["path"]).resolve()
        if not data_path.is_file():
            raise EvalkitError(
                f"suite {path}: dataset {name!r} names {spec['path']}, which does not exist",
                hint=f"paths are relative to the suite file ({path.parent})",
            )
        limit = spec.get("limit")
        if limit is not None and not _positive_int(limit):
            raise EvalkitError(
                f"suite {path}: dataset {name!r} has limit {limit!r}",
                hint="a whole number of examples, at least 1 (or no limit)",
            )
        datasets[name] = DatasetSpec(name, data_path, limit)
    seed = definition.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EvalkitError(f"suite {path}: seed {seed!r} is not a whole number")
    specs = definition.get("tasks", [])
    if not isinstance(specs, list) or not all(isinstance(t, dict) for t in specs):
        raise EvalkitError(f"suite {path}: tasks must be [[tasks]] tables")
    tasks = []
    for i, spec in enumerate(specs, start=1):
        spec = dict(spec)
        kind = spec.pop("type", None)
        kind_of = task_type_or_error(path, i, kind)
        dataset = spec.pop("dataset", None)
        if kind_of.needs_dataset and dataset not in datasets:
            known = ", ".join(datasets) or "none defined"
            raise EvalkitError(
                f"suite {path}: task {i} ({kind}) names dataset {dataset!r}",
                hint=f"define it under [datasets.NAME]; known: {known}",
            )
        name = task_name({"type": kind, "dataset": dataset, **spec})
        spec.pop("name", None)
        if "probes" in kind_of.params():
            spec["probes"] = _probe_file(path, spec.get("probes"))
        tasks.append(TaskSpec(name, kind, dataset, spec))
    if not tasks:
        raise EvalkitError(f"suite {path} defines no [[tasks]]")
    for task in tasks:
        _check_task(path, task, tasks)
    names = [t.name for t in tasks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise EvalkitError(f"suite {path}: two tasks are named {duplicate!r}; give each a name")
    return Suite(
        definition.get("name", path.stem),
        path,
        datasets,
        tasks,
        seed,
        definition,
    )


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def task_type_or_error(path: Path, number: int, kind):
    """The registered type of the suite's task ``number``."""
    try:
        return task_type(kind)
    except EvalkitError as exc:
        raise EvalkitError(f"suite {path}: task {number}: {exc.message}", hint=exc.hint) from None


def _check_task(path: Path, task: TaskSpec, tasks: list[TaskSpec]) -> None:
    """A task takes only its type's keys, with valid values, so a misspelt key is an error at
    once rather than a default silently used."""
    kind = task_type(task.type)
    where = f"suite {path}: task {task.name}"
    check_keys(task.params, kind.params(), what=f"{task.type} key", where=where)
    try:
        kind.check(task, tasks)
    except EvalkitError as exc:
        raise EvalkitError(f"{where}: {exc.message}", hint=exc.hint) from None


def _probe_file(suite: Path, given: str | None) -> str:
    """The probe file of a bias task: given relative to the suite, else the project's set."""
    if given is None:
        from evalkit.bias import PROBES

        return str(PROBES)
    found = (suite.parent / given).resolve()
    if not found.is_file():
        raise EvalkitError(
            f"suite {suite}: bias probes {given} do not exist",
            hint=f"paths are relative to the suite file ({suite.parent})",
        )
    return str(found)


def load_examples(spec: DatasetSpec) -> list[Example]:
    """The examples of a dataset file: conversation JSONL, JSONL with "text", or plain lines."""
    path = spec.path
    examples = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise EvalkitError(
            f"{path}: line {line} is not UTF-8 text", hint="save the file as UTF-8"
        ) from None
    for number, line in enumerate(lines, start=1):
        if spec.limit is not None and len(examples) >= spec.limit:
            break
        if not line.strip():
            continue
        if path.suffix not in (".jsonl", ".json"):
            examples.append(Example(str(number), None, line, {}))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalkitError(
                f"{path}: line {number} is not JSON ({exc.msg})", hint="fix or remove the line"
            ) from None
        examples.append(_example(record, path, number))
    if not examples:
        raise EvalkitError(f"dataset {spec.name} ({path}) is empty", hint="give it examples")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise EvalkitError(f"{path}: example ids repeat", hint="give each record a unique id")
    return examples


def _example(record: dict, path: Path, number: int) -> Example:
    if not isinstance(record, dict):
        raise EvalkitError(f"{path}: line {number} is not a JSON object")
    metadata = {k: v for k, v in record.items() if k not in ("messages", "text")}
    example_id = str(record.get("id", number))
    if "messages" in record:
        messages = record["messages"]
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
            for m in messages
        )
        if not ok or not messages:
            raise EvalkitError(
                f"{path}: line {number}, field messages: expected a list of "
                '{"role": ..., "content": "..."} objects'
            )
        return Example(example_id, messages, None, metadata)
    if isinstance(record.get("text"), str):
        return Example(example_id, None, record["text"], metadata)
    raise EvalkitError(
        f"{path}: line {number} has neither a messages list nor a text field",
        hint='use {"messages": [...]} for conversations or {"text": "..."} for texts',
    )
