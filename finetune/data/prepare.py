"""Data preparation: raw chats in, a dataset directory out, and every record accounted for.

Stages, in order: read → normalize → validate → filter → scrub PII → deduplicate → balance →
split → contamination check → tokenize and describe. Each record read is either kept in a
split or written to ``dropped.jsonl`` with its file, line, stage and reason; per input file,
kept + dropped == read (checked before anything is written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evalkit.contamination import NGRAM, conversation_text, overlap
from evalkit.errors import EvalkitError, unknown_name
from evalkit.provenance import sha256_file
from evalkit.workspace import atomic_dir
from finetune.data.formats import FORMATS, InputSpec, Record, read_input
from finetune.data.manifest import split_hashes
from finetune.data.split import SPLITS, assign_splits, seeded_key

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# Stages whose drops mean the input is broken (``strict`` fails on them), not a policy choice.
ERROR_STAGES = ("read", "validate")


@dataclass
class PrepareConfig:
    """Every option of :func:`prepare`; saved in the manifest so a dataset can be rebuilt."""

    format: str = "auto"
    prompt_column: str = "prompt"  # CSV inputs
    response_column: str = "response"
    max_line_bytes: int = 1_000_000  # longer lines are dropped, not parsed
    strict: bool = False  # fail on any unreadable or invalid record instead of dropping it
    # normalize
    fix_mojibake: bool = True
    strip_html: bool = False
    # validate
    system_prompt: str = "keep"  # keep | remove
    default_system: str | None = None  # added to conversations without a system turn
    # filter
    model: str | None = None  # model directory whose tokenizer and chat template measure length
    min_tokens: int | None = None
    max_tokens: int | None = None
    require: dict[str, str] = field(default_factory=dict)  # keep only records with field=value
    exclude: dict[str, str] = field(default_factory=dict)  # drop records with field=value
    # scrub
    scrub_pii: bool = True
    # deduplicate
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = 0.8  # Jaccard on character 5-gram shingles
    near_dup_action: str = "drop"  # drop | group (keep them, in one split)
    # balance
    balance_by: str | None = None  # a metadata field, e.g. topic
    cap: int | None = None  # at most this many records per class (seeded choice)
    upsample_to: int | None = None  # training records per class at least (seeded repeats)
    # split
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    group_by: str = "conversation_id"  # records sharing it stay in one split (else their id)
    seed: int = 0
    # contamination
    eval_sets: dict[str, str] = field(default_factory=dict)  # name -> path
    ngram: int = NGRAM
    drop_contaminated: bool = False
    # describe
    max_length: int | None = None  # report how many are longer; None: the model's context

    def __post_init__(self) -> None:
        self.ratios = tuple(float(r) for r in self.ratios)  # type: ignore[assignment]
        checks = [
            (self.format in FORMATS, f"format must be one of {', '.join(FORMATS)}"),
            (self.system_prompt in ("keep", "remove"), "system_prompt must be keep or remove"),
            (self.near_dup_action in ("drop", "group"), "near_dup_action must be drop or group"),
            (0 < self.near_dup_threshold <= 1, "near_dup_threshold must be in (0, 1]"),
            (len(self.ratios) == 3 and min(self.ratios) >= 0, "ratios: three shares >= 0"),
            (abs(sum(self.ratios) - 1) < 1e-6, "ratios must add up to 1"),
            (
                self.model or not (self.min_tokens or self.max_tokens),
                "token length bounds need a model whose tokenizer counts them (--model)",
            ),
            (
                not ((self.cap or self.upsample_to) and not self.balance_by),
                "cap and upsample_to need balance_by (the field to balance)",
            ),
            *(
                (value is None or value >= 1, f"{name} (--{flag}) must be at least 1, not {value}")
                for name, flag, value in (
                    ("cap", "cap", self.cap),
                    ("upsample_to", "upsample-to", self.upsample_to),
                    ("max_length", "max-length", self.max_length),
                )
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise EvalkitError(f"invalid option: {message}")


@dataclass
class _Item:
    """A record on its way through the stages."""

    record: Record
    conv: dict
    text: str = ""  # flattened turns, for deduplication
    tokens: int | None = None


class _Ledger:
    """Counts per stage and per file, and the dropped records with their reasons."""

    def __init__(self) -> None:
        self.read: Counter[str] = Counter()
        self.dropped: list[dict] = []
        self.stages: list[dict] = []

    def drop(self, rec: Record, stage: str, reason: str, detail: str = "", conv=None) -> None:
        self.dropped.append(
            {
                "file": rec.file,
                "line": rec.line,
                "source": rec.source,
                "stage": stage,
                "reason": reason,
                "detail": detail,
                "record": conv if conv is not None else rec.conversation or rec.raw,
            }
        )

    def stage(self, name: str, before: int, after: int, started: float, **extra) -> None:
        dropped = Counter(d["reason"] for d in self.dropped if d["stage"] == name)
        seconds = time.perf_counter() - started
        self.stages.append(
            {
                "stage": name,
                "in": before,
                "out": after,
                "dropped": dict(dropped),
                "seconds": round(seconds, 3),
                **extra,
            }
        )
        log.info("%-13s %6d -> %6d  %.2fs", name, before, after, seconds)


def flatten(conv: dict) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in conv["messages"])


def _validate(conv: dict, cfg: PrepareConfig) -> tuple[str, str] | None:
    """Fix what the options say to fix; return (reason, detail) when the record cannot be used."""
    messages = conv["messages"]
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            return "unknown role", f"turn {i + 1}: {m.get('role')!r}"
        if not isinstance(m.get("content"), str):
            return "content is not text", f"turn {i + 1}: {type(m.get('content')).__name__}"
        if not m["content"].strip():
            return "empty turn", f"turn {i + 1} ({m['role']})"
    if any(m["role"] == "system" for m in messages[1:]):
        return "system turn not first", ""
    if cfg.system_prompt == "remove":
        conv["messages"] = messages = [m for m in messages if m["role"] != "system"]
    elif cfg.default_system and not (messages and messages[0]["role"] == "system"):
        conv["messages"] = messages = [{"role": "system", "content": cfg.default_system}, *messages]
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn", "nothing to learn from"
    return None


def _token_lengths(tokenizer, convs: Sequence[dict]) -> list[int]:
    if not convs:
        return []
    rendered = [tokenizer.apply_chat_template(c["messages"], tokenize=False) for c in convs]
    return [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def _describe(lengths: Sequence[int], max_length: int) -> dict:
    import numpy as np

    if not lengths:
        return {"count": 0}
    arr = np.asarray(lengths)
    return {
        "count": len(arr),
        "total": int(arr.sum()),
        "mean": round(float(arr.mean()), 1),
        **{f"p{q}": int(np.percentile(arr, q)) for q in (50, 90, 99)},
        "max": int(arr.max()),
        "truncated": int((arr > max_length).sum()),
    }


def prepare(inputs: Sequence[str | InputSpec], out: str | Path, config: PrepareConfig) -> dict:
    """Prepare a dataset directory from raw chat files; returns its manifest.

    >>> prepare(["support=fixtures/support_faq.jsonl"], "ds", PrepareConfig(balance_by="topic"))
    """
    cfg = config
    specs = [s if isinstance(s, InputSpec) else InputSpec.parse(str(s)) for s in inputs]
    if not specs:
        raise EvalkitError("no input files", hint="name one or more JSONL, JSON or CSV files")
    ledger = _Ledger()
    tokenizer = None
    if cfg.model:
        from evalkit.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)

    # read
    started = time.perf_counter()
    items: list[_Item] = []
    for spec in specs:
        for rec in read_input(
            spec,
            cfg.format,
            max_line_bytes=cfg.max_line_bytes,
            prompt_column=cfg.prompt_column,
            response_column=cfg.response_column,
        ):
            ledger.read[rec.file] += 1
            if rec.error:
                ledger.drop(rec, "read", rec.error, rec.detail)
            else:
                items.append(_Item(rec, rec.conversation))  # type: ignore[arg-type]
    ledger.stage("read", sum(ledger.read.values()), len(items), started)

    # normalize
    from finetune.data.normalize import normalize_text

    started = time.perf_counter()
    for item in items:
        for m in item.conv["messages"]:
            if isinstance(m.get("content"), str):
                m["content"] = normalize_text(
                    m["content"], fix_mojibake=cfg.fix_mojibake, html_strip=cfg.strip_html
                )
    ledger.stage("normalize", len(items), len(items), started)

    items = _run_stage(ledger, "validate", items, lambda it: _validate(it.conv, cfg))
    _check_strict(ledger, cfg)
    items = _filter(ledger, items, cfg, tokenizer)

    # scrub PII
    started = time.perf_counter()
    pii_counts: Counter[str] = Counter()
    if cfg.scrub_pii:
        from finetune.data.pii import scrub

        for item in items:
            for m in item.conv["messages"]:
                m["content"], found = scrub(m["content"])
                pii_counts.update(found)
    ledger.stage("scrub_pii", len(items), len(items), started, replaced=dict(pii_counts))

    for item in items:
        item.text = flatten(item.conv)
    items, near_clusters = _deduplicate(ledger, items, cfg)
    _check_balance_field(items, cfg.balance_by)
    class_before = _classes(items, cfg.balance_by)
    items = _cap(ledger, items, cfg)

    # split
    started = time.perf_counter()
    keys = [str(it.conv.get(cfg.group_by) or it.conv["id"]) for it in items]
    assignment, n_groups = assign_splits(keys, near_clusters, cfg.ratios, cfg.seed)
    splits: dict[str, list[_Item]] = {s: [] for s in SPLITS}
    for item, split in zip(items, assignment):
        splits[split].append(item)
    ledger.stage(
        "split",
        len(items),
        len(items),
        started,
        sizes={s: len(v) for s, v in splits.items()},
        groups=n_groups,
    )

    contamination = _contamination(ledger, splits, cfg)
    if not any(splits.values()):
        raise _nothing_kept(ledger)
    upsampled = _upsample(splits, cfg)

    # describe: lengths against what training will take (the model's context unless given)
    started = time.perf_counter()
    token_stats = {}
    max_length = cfg.max_length or (_context_length(cfg.model) if cfg.model else None)
    if tokenizer is not None:
        for split, members in splits.items():
            lengths = _token_lengths(tokenizer, [it.conv for it in members])
            token_stats[split] = _describe(lengths, max_length)
    ledger.stage("describe", len(items), len(items), started)

    kept = Counter(it.record.file for members in splits.values() for it in members)
    kept_upsampled = Counter(it.record.file for it in upsampled)
    dropped = Counter(d["file"] for d in ledger.dropped)
    files = []
    for spec in specs:
        name = str(spec.path)
        n_kept = kept[name] - kept_upsampled[name]
        if n_kept + dropped[name] != ledger.read[name]:  # the promise of this module
            raise RuntimeError(f"{name}: kept {n_kept} + dropped {dropped[name]} != read")
        files.append(
            {
                "path": name,
                "source": spec.source,
                "sha256": sha256_file(spec.path),
                "read": ledger.read[name],
                "kept": n_kept,
                "dropped": dropped[name],
                "dropped_by_reason": dict(
                    Counter(d["reason"] for d in ledger.dropped if d["file"] == name)
                ),
            }
        )
    manifest = {
        "format_version": 1,
        "inputs": files,
        "options": asdict(cfg) | {"max_length": max_length},
        "stages": ledger.stages,
        "counts": {
            "read": sum(ledger.read.values()),
            "dropped": len(ledger.dropped),
            **{s: len(v) for s, v in splits.items()},
            "upsampled": len(upsampled),
        },
        "pii": dict(pii_counts),
        "classes": {
            "field": cfg.balance_by,
            "before": class_before,
            "after": _classes([i for v in splits.values() for i in v], cfg.balance_by),
        },
        "contamination": contamination,
        "tokens": token_stats,
    }
    return _write(out, splits, ledger.dropped, manifest)


def _run_stage(ledger: _Ledger, name: str, items: list[_Item], check) -> list[_Item]:
    started = time.perf_counter()
    kept = []
    for item in items:
        problem = check(item)
        if problem:
            ledger.drop(item.record, name, *problem, conv=item.conv)
        else:
            kept.append(item)
    ledger.stage(name, len(items), len(kept), started)
    return kept


def _check_strict(ledger: _Ledger, cfg: PrepareConfig) -> None:
    errors = [d for d in ledger.dropped if d["stage"] in ERROR_STAGES]
    if cfg.strict and errors:
        lines = [f"{d['file']}:{d['line']}: {d['reason']} {d['detail']}".rstrip() for d in errors]
        more = f"\n  ... and {len(lines) - 10} more" if len(lines) > 10 else ""
        raise EvalkitError(
            f"{len(errors)} bad record(s) in the input (--strict):\n  "
            + "\n  ".join(lines[:10])
            + more,
            hint="fix these lines, or run without --strict to drop them into dropped.jsonl",
        )


def _filter(ledger: _Ledger, items: list[_Item], cfg: PrepareConfig, tokenizer) -> list[_Item]:
    if tokenizer is not None and (cfg.min_tokens or cfg.max_tokens):
        for item, n in zip(items, _token_lengths(tokenizer, [it.conv for it in items])):
            item.tokens = n

    def check(item: _Item) -> tuple[str, str] | None:
        for key, value in cfg.require.items():
            if str(item.conv.get(key)) != value:
                return "metadata rule", f"{key} is {item.conv.get(key)!r}, required {value!r}"
        for key, value in cfg.exclude.items():
            if str(item.conv.get(key)) == value:
                return "metadata rule", f"{key} is {value!r}, excluded"
        if item.tokens is not None:
            if cfg.min_tokens and item.tokens < cfg.min_tokens:
                return "too short", f"{item.tokens} tokens < {cfg.min_tokens}"
            if cfg.max_tokens and item.tokens > cfg.max_tokens:
                return "too long", f"{item.tokens} tokens > {cfg.max_tokens}"
        return None

    return _run_stage(ledger, "filter", items, check)


def _deduplicate(
    ledger: _Ledger, items: list[_Item], cfg: PrepareConfig
) -> tuple[list[_Item], list[tuple[int, int]]]:
    """Drop exact duplicates, then near duplicates (or keep them, paired for the split)."""
    from finetune.data.dedup import exact_key, near_duplicate_clusters

    if cfg.exact_dedup:
        seen: dict[str, str] = {}

        def check(item: _Item) -> tuple[str, str] | None:
            key = exact_key(item.text)
            if key in seen:
                return "exact duplicate", f"of {seen[key]}"
            seen[key] = str(item.conv["id"])
            return None

        items = _run_stage(ledger, "exact_dedup", items, check)
    pairs: list[tuple[int, int]] = []
    if cfg.near_dedup:
        started = time.perf_counter()
        clusters = near_duplicate_clusters(
            [it.text for it in items], threshold=cfg.near_dup_threshold, seed=cfg.seed
        )
        kept = []
        position: dict[int, int] = {}  # index in items -> index in kept, for cluster heads
        for i, (item, head) in enumerate(zip(items, clusters)):
            if head == i:
                position[i] = len(kept)
                kept.append(item)
            elif cfg.near_dup_action == "group":
                kept.append(item)
                pairs.append((len(kept) - 1, position[head]))
            else:
                ledger.drop(
                    item.record,
                    "near_dedup",
                    "near duplicate",
                    f"of {items[head].conv['id']}",
                    conv=item.conv,
                )
        ledger.stage("near_dedup", len(items), len(kept), started, clusters=len(set(clusters)))
        items = kept
    return items, pairs


def _classes(items: Sequence[_Item], field_name: str | None) -> dict[str, int]:
    if not field_name:
        return {}
    return dict(sorted(Counter(str(it.conv.get(field_name, "(none)")) for it in items).items()))


def _check_balance_field(items: Sequence[_Item], field_name: str | None) -> None:
    """The field to balance by is one the records have: a typo must not make one class of all."""
    if not field_name or not items or any(field_name in it.conv for it in items):
        return
    fields = {key for it in items for key in it.conv if key != "messages"}
    error = unknown_name("metadata field", field_name, fields, where="--balance-by")
    raise EvalkitError(f"{error.message}: no record has it", hint=error.hint)


def _nothing_kept(ledger: _Ledger) -> EvalkitError:
    """The error for a run that keeps no record: how many went at each stage, and why."""
    reasons = Counter((d["stage"], d["reason"]) for d in ledger.dropped)
    lines = [f"{stage}: {reason}: {n:,}" for (stage, reason), n in reasons.most_common()]
    return EvalkitError(
        f"every record was dropped ({sum(ledger.read.values()):,} read), so no dataset was "
        "written:\n  " + "\n  ".join(lines or ["the input holds no record"]),
        hint="loosen the option that dropped them, or check the input (--format, the columns)",
    )


def _context_length(model: str) -> int:
    """The model's context (max_position_embeddings), the longest conversation it trains on."""
    from transformers import AutoConfig

    try:
        length = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
    except Exception as exc:  # transformers raises many types for a config it cannot read
        raise EvalkitError(f"cannot read the model config in {model}: {exc}") from exc
    if not isinstance(length, int):
        raise EvalkitError(
            f"the config in {model} names no context length (max_position_embeddings)",
            hint="pass --max-length",
        )
    return length


def _cap(ledger: _Ledger, items: list[_Item], cfg: PrepareConfig) -> list[_Item]:
    """At most ``cap`` records per class; which ones is a seeded hash of their id."""
    if cfg.cap is None:
        return items
    started = time.perf_counter()
    by_class: dict[str, list[_Item]] = defaultdict(list)
    for item in items:
        by_class[str(item.conv.get(cfg.balance_by, "(none)"))].append(item)
    keep: set[int] = set()
    for label, members in by_class.items():
        ranked = sorted(
            members, key=lambda it: (seeded_key(cfg.seed, str(it.conv["id"])), str(it.conv["id"]))
        )
        keep.update(id(it) for it in ranked[: cfg.cap])
        for it in ranked[cfg.cap :]:
            ledger.drop(
                it.record,
                "balance",
                "over class cap",
                f"{cfg.balance_by}={label}: cap {cfg.cap}",
                conv=it.conv,
            )
    kept = [it for it in items if id(it) in keep]
    ledger.stage("balance", len(items), len(kept), started)
    return kept


def _upsample(splits: dict[str, list[_Item]], cfg: PrepareConfig) -> list[_Item]:
    """Repeat training records of small classes up to ``upsample_to``; returns the copies.

    Only the training split: repeated examples in validation or test would skew the measure.
    """
    if not cfg.upsample_to:
        return []
    by_class: dict[str, list[_Item]] = defaultdict(list)
    for item in splits["train"]:
        by_class[str(item.conv.get(cfg.balance_by, "(none)"))].append(item)
    copies = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda it: seeded_key(cfg.seed, str(it.conv["id"])))
        for k in range(max(0, cfg.upsample_to - len(members))):
            copies.append(members[k % len(members)])
    splits["train"] = splits["train"] + copies
    return copies


def _read_eval_set(name: str, path: str) -> list[str]:
    p = Path(path)
    if p.suffix.lower() == ".txt":
        try:
            return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise EvalkitError(f"cannot read evaluation set {name} at {p}: {exc}") from exc
    records = list(read_input(InputSpec(p, name)))
    return [conversation_text(r.conversation["messages"]) for r in records if r.conversation]


def _contamination(ledger: _Ledger, splits: dict[str, list[_Item]], cfg: PrepareConfig) -> dict:
    report = {}
    started = time.perf_counter()
    train = splits["train"]
    hits_all: dict[int, str] = {}
    for name, path in cfg.eval_sets.items():
        eval_texts = _read_eval_set(name, path)
        train_texts = [conversation_text(it.conv["messages"]) for it in train]
        hits, contaminated = overlap(train_texts, eval_texts, cfg.ngram)
        report[name] = {
            "path": path,
            "examples": len(eval_texts),
            "examples_contaminated": contaminated,
            "train_records_overlapping": len(hits),
            "ngram": cfg.ngram,
        }
        for i in hits:
            hits_all.setdefault(i, name)
    if cfg.drop_contaminated and hits_all:
        for i, name in sorted(hits_all.items()):
            ledger.drop(
                train[i].record,
                "contamination",
                "overlaps an evaluation set",
                f"shares a {cfg.ngram}-gram with {name}",
                conv=train[i].conv,
            )
        splits["train"] = [it for i, it in enumerate(train) if i not in hits_all]
    ledger.stage("contamination", len(train), len(splits["train"]), started)
    return report


def _write(out: str | Path, splits: dict[str, list[_Item]], dropped: list[dict], manifest: dict):
    """Write the dataset directory next to its final place, then move it there in one step."""
    from finetune.data.report import render_report

    def write(tmp: Path) -> None:
        for split, members in splits.items():
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for item in members:
                    f.write(json.dumps(item.conv, ensure_ascii=False) + "\n")
        with open(tmp / "dropped.jsonl", "w", encoding="utf-8") as f:
            for d in dropped:
                f.write(json.dumps(d, ensure_ascii=False, default=str) + "\n")
        manifest["files"] = split_hashes(tmp)
        manifest["dataset_hash"] = hashlib.sha256(
            json.dumps(manifest["files"], sort_keys=True).encode()
        ).hexdigest()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "report.md").write_text(render_report(manifest))

    atomic_dir(Path(out), write)
    return manifest
