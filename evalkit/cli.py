"""The ``evalkit`` command: a thin layer over the library, one subcommand per job.

Each command parses its arguments, calls one library function and turns an
:class:`~evalkit.errors.EvalkitError` into a message and exit code 2. Heavy libraries are
imported inside the commands, so ``evalkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from evalkit import __version__
from evalkit.errors import EvalkitError
from evalkit.stats import ALPHA, MIN_RESAMPLES, N_RESAMPLES, SEED

log = logging.getLogger("evalkit")


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _cmd_data_corpus(args: argparse.Namespace) -> None:
    from evalkit.workspace import write_jsonl
    from finetune.data.corpora import load_corpus

    count = write_jsonl(load_corpus(args.name), args.out)
    print(f"wrote {count} conversations of {args.name} to {args.out}")


def _key_values(pairs: list[str] | None, option: str) -> dict[str, str]:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EvalkitError(f"{option} {pair!r}: expected NAME=VALUE")
        result[key] = value
    return result


def _cmd_data_prepare(args: argparse.Namespace) -> None:
    from finetune.data.prepare import PrepareConfig, prepare

    try:
        ratios = tuple(float(r) for r in args.split.split(","))
    except ValueError:
        raise EvalkitError(
            f"--split {args.split!r}: expected three shares like 0.8,0.1,0.1"
        ) from None
    config = PrepareConfig(
        format=args.format,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        strict=args.strict,
        strip_html=args.strip_html,
        system_prompt=args.system_prompt,
        default_system=args.default_system,
        model=args.model,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        require=_key_values(args.require, "--require"),
        exclude=_key_values(args.exclude, "--exclude"),
        scrub_pii=not args.no_pii,
        exact_dedup=not args.no_dedup,
        near_dedup=not args.no_dedup and not args.no_near_dedup,
        near_dup_threshold=args.near_dup_threshold,
        near_dup_action=args.near_dup_action,
        balance_by=args.balance_by,
        cap=args.cap,
        upsample_to=args.upsample_to,
        ratios=ratios if len(ratios) == 3 else (),
        group_by=args.group_by,
        seed=args.seed,
        eval_sets=_key_values(args.eval_set, "--eval-set"),
        ngram=args.ngram,
        drop_contaminated=args.drop_contaminated,
        max_length=args.max_length,
    )
    manifest = prepare(args.inputs, args.out, config)
    counts = manifest["counts"]
    print(
        f"{args.out}: {counts['read']:,} read -> {counts['train']:,} train, "
        f"{counts['validation']:,} validation, {counts['test']:,} test; "
        f"{counts['dropped']:,} dropped (see dropped.jsonl and report.md)"
    )


def _cmd_data_stats(args: argparse.Namespace) -> None:
    from finetune.data.report import dataset_summary

    print(dataset_summary(args.dir))


def _cmd_base_model(args: argparse.Namespace) -> None:
    from evalkit.workspace import open_workspace
    from finetune.base_model import base_model_config, build_base_model, summary

    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    config = base_model_config(args.size, **overrides)
    path = build_base_model(open_workspace(args.workspace), config, force=args.force)
    print(summary(path))


TRAIN_HELP = {
    "assistant_only": "loss on the assistant's tokens only (--no-assistant-only: every token)",
    "packing": "pack several conversations per row (--no-packing: one per row)",
    "max_length": "tokens per row (default: the model's context length)",
    "truncate": "cut conversations over max-length instead of leaving them out",
    "lora": "train LoRA adapters (peft) and merge them into model/",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "freeze_layers": "freeze the embeddings and the first N blocks",
    "learning_rate": "peak learning rate",
    "schedule": "cosine, linear or constant, after the warm-up",
    "warmup_steps": "linear warm-up steps",
    "batch_size": "rows per process per micro-step",
    "grad_accum": "micro-steps per optimizer step",
    "epochs": "passes over the training rows",
    "max_steps": "optimizer steps (overrides --epochs)",
    "weight_decay": "AdamW weight decay on matrices",
    "dropout": "set every dropout of the model to this",
    "seed": "seed for initialization, data order and dropout",
    "eval_every": "validation loss every N steps",
    "patience": "stop after N evaluations without improvement",
    "save_every": "checkpoint every N steps",
    "log_every": "a line in metrics.jsonl every N steps",
    "device": "cpu, cuda or cuda:N (default: CUDA when present)",
    "fast": "speedups checked against the plain path (default: on unless EVALKIT_FAST=0)",
}


def _add_run_inputs(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--base", help="base model directory (Hugging Face format)")
    parser.add_argument("--data", help="dataset directory from `evalkit data prepare`")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON with training options")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; defaults stay in the dataclass (None = not given)."""
    from dataclasses import MISSING, fields

    from finetune.train import TrainConfig, option_types

    types = option_types()
    for f in fields(TrainConfig):
        if f.name not in TRAIN_HELP:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = TRAIN_HELP[f.name] + (f" (default: {default})" if default is not None else "")
        if types[f.name] is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(flag, dest=f.name, type=types[f.name], default=None, help=help_text)


def _train_config(args: argparse.Namespace):
    from dataclasses import fields

    from finetune.train import TrainConfig

    given = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    given = {k: v for k, v in given.items() if v is not None}
    if args.config:
        return TrainConfig.from_file(args.config, **given)
    return TrainConfig(**given)


def _cmd_train(args: argparse.Namespace) -> None:
    from finetune.train import train

    config = _train_config(args)
    for name in ("base", "data", "out"):
        if not getattr(config, name):
            raise EvalkitError(f"--{name} is required (or set it in --config)")
    print(train(config, resume=args.resume).describe())


def _cmd_sweep(args: argparse.Namespace) -> None:
    from finetune.sweep import parse_space, sweep

    space = parse_space(args.param or [])
    config = _train_config(args)
    for name in ("base", "data"):
        if not getattr(config, name):
            raise EvalkitError(f"--{name} is required (or set it in --config)")
    if not args.out:
        raise EvalkitError("--out is required: the sweep directory")
    rows = sweep(config, space, args.out, method=args.method, trials=args.trials, seed=config.seed)
    print((Path(args.out) / "results.md").read_text(), end="")
    print(f"{len(rows)} trials; results in {args.out}/results.json and results.md")


def _store(args: argparse.Namespace) -> Path:
    from evalkit.workspace import open_workspace

    return open_workspace(args.workspace).store_path


def _cmd_eval(args: argparse.Namespace) -> None:
    from evalkit.evaluate import run_suite

    done = run_suite(
        args.suite,
        args.model,
        _store(args),
        name=args.name,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(done.describe())


def _cmd_runs(args: argparse.Namespace) -> None:
    from evalkit.results import get_run, list_runs
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        if args.run:
            print(json.dumps(get_run(con, args.run), indent=2, default=str))
            return
        runs = list_runs(con)
    if not runs:
        print("no evaluation runs yet: `evalkit eval --model DIR --suite FILE`")
    for r in runs:
        print(
            f"{r['run_id']}  {r['status']:<8}  {str(r['started_at'])[:19]}  "
            f"{r['suite_name']}  model {(r['model_hash'] or '')[:12]}  {r['name'] or ''}"
        )


def _segments(path: str) -> list[str]:
    """The lines of a text file (a last newline ends the last line, it adds none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EvalkitError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise EvalkitError(f"{path} is not UTF-8 text", hint="save it as UTF-8") from None
    return text.removesuffix("\n").split("\n")


def _cmd_score(args: argparse.Namespace) -> None:
    from evalkit.metrics import check_pairs, corpus_score, signature

    hypotheses, references = _segments(args.input), _segments(args.reference)
    check_pairs(hypotheses, references, f"{args.input} against {args.reference}")
    for name in args.metrics:
        score = corpus_score(name, hypotheses, references)
        print(json.dumps({"metric": name, "score": round(score, 6), "signature": signature(name)}))


def _cmd_compare(args: argparse.Namespace) -> None:
    from evalkit.compare import compare_runs
    from evalkit.gate import GateSpec, load_spec, too_small_to_detect
    from evalkit.store import open_store

    spec = load_spec(args.spec) if args.spec else GateSpec([])
    given = {"alpha": args.alpha, "n_resamples": args.resamples, "seed": args.seed}
    spec = replace(spec, **{k: v for k, v in given.items() if v is not None})  # flags win
    with open_store(_store(args)) as con:
        comparison = compare_runs(
            con,
            args.baseline,
            args.candidate,
            by=args.by or (),
            n_resamples=spec.n_resamples,
            seed=spec.seed,
            alpha=spec.alpha,
        )
    warnings = too_small_to_detect(comparison, spec)
    if args.json:
        data = comparison.to_dict() | {"warnings": warnings}
        print(json.dumps(data, indent=2, default=str))
        return
    print(comparison.table())
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _cmd_gate(args: argparse.Namespace) -> int:
    from evalkit.gate import load_spec, record_report, report_name, run_gate, write_reports
    from evalkit.store import open_store
    from evalkit.workspace import open_workspace

    spec = load_spec(args.spec)
    workspace = open_workspace(args.workspace)
    with open_store(workspace.store_path) as con:
        report = run_gate(con, args.baseline, args.candidate, spec)
        out = Path(args.out) if args.out else workspace.reports_dir / report_name(report)
        paths = write_reports(report, out)
        record_report(con, report, out)
    for r in report.rules:
        print(f"{r.verdict:<13} {r.rule}")
    for check in report.checks:
        if check["verdict"] != "pass":
            print(f"{check['verdict']:<13} {check['check']}")
    print(f"gate: {report.verdict}; reports: {', '.join(str(p) for p in paths.values())}")
    return report.exit_code


def _cmd_serve(args: argparse.Namespace) -> None:
    from evalkit.workspace import open_workspace
    from monitor.events import LogConfig
    from monitor.server import ServeConfig, serve

    config = ServeConfig(
        model=args.model,
        name=args.name,
        host=args.host,
        port=args.port,
        api_key_file=args.api_key_file,
        device=args.device,
        allow_template_mismatch=args.allow_template_mismatch,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        log=LogConfig(max_events=args.flush_events, max_age_s=args.flush_seconds, wal=args.wal),
    )
    workspace = open_workspace(args.workspace)
    serve(config, workspace.events_dir, workspace.store_path)


def _cmd_monitor_events(args: argparse.Namespace) -> None:
    from datetime import datetime

    from evalkit.workspace import open_workspace
    from monitor.events import export_conversations, recent, summary

    folder = open_workspace(args.workspace).events_dir
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise EvalkitError(
                f"--since {args.since!r} is not ISO 8601 (2026-12-07T10:00)"
            ) from None
    if args.export:
        count = export_conversations(folder, args.export)
        print(f"wrote {count} conversations to {args.export}")
        return
    for row in summary(folder, since):
        print("  ".join(f"{k} {v}" for k, v in row.items()))
    print()
    for row in recent(folder, args.limit, since):
        response = (row["response"] or "")[:60].replace("\n", " ")
        print(f"{str(row['timestamp'])[:19]}  {row['model']}  {row['status']}  {response}")


def _cmd_monitor_import(args: argparse.Namespace) -> None:
    from evalkit.workspace import open_workspace
    from monitor.ingest import import_file

    mapping = {src: dest for src, dest in _key_values(args.map, "--map").items()}
    count = import_file(args.file, open_workspace(args.workspace).events_dir, mapping)
    print(f"imported {count} exchanges from {args.file}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from evalkit.demo import run_demo

    run_demo(args.workspace, size=args.size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evalkit",
        description="Evaluate and monitor fine-tuned chat language models.",
    )
    parser.add_argument("--version", action="version", version=f"evalkit {__version__}")
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        help="workspace folder (default: $EVALKIT_WORKSPACE, else ./.evalkit)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="collect and prepare conversation data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    corpus = data_commands.add_parser(
        "corpus",
        help="export an embedded corpus as conversation JSONL",
        description="Write an embedded corpus (chitchat, topics, support) as JSONL in the "
        "messages format, with its metadata.",
    )
    corpus.add_argument("name", help="chitchat, topics or support")
    corpus.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write")
    corpus.set_defaults(func=_cmd_data_corpus)
    _add_prepare_parser(data_commands)
    stats = data_commands.add_parser(
        "stats",
        help="describe a prepared dataset directory",
        description="Print the report of a dataset directory, checking its files against the "
        "manifest.",
    )
    stats.add_argument("dir", help="dataset directory written by `evalkit data prepare`")
    stats.set_defaults(func=_cmd_data_stats)

    finetune = commands.add_parser("finetune", help="train models")
    ft_commands = finetune.add_subparsers(dest="finetune_command", required=True, metavar="COMMAND")
    base = ft_commands.add_parser(
        "base-model",
        help="train (or reuse) the embedded base model",
        description="Train a byte-level BPE tokenizer and a small GPT-2 on the chit-chat corpus, "
        "with a chat template, and save them in Hugging Face format under WORKSPACE/models. "
        "Cached by config: asking again returns the saved model at once.",
    )
    base.add_argument("--size", default="default", help="default (~3.5 min on 2 cores) or micro")
    base.add_argument("--max-steps", type=int, help="override the number of training steps")
    base.add_argument("--force", action="store_true", help="retrain even if cached")
    base.set_defaults(func=_cmd_base_model)
    train = ft_commands.add_parser(
        "train",
        help="fine-tune a chat model on a prepared dataset",
        description="Supervised fine-tuning (full or LoRA) of a model directory on a dataset "
        "directory, into a run directory: config.json, metrics.jsonl, checkpoints/, model/, "
        "best/ and a model card. Runs unchanged under torchrun (DDP).",
    )
    _add_run_inputs(train, out_help="run directory to create")
    train.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    _add_train_options(train)
    train.set_defaults(func=_cmd_train)
    sweep = ft_commands.add_parser(
        "sweep",
        help="train over a grid of hyperparameters and rank the runs",
        description="Each trial is a training run in OUT/trial-NNN; the trials are ranked by "
        "validation perplexity in OUT/results.json and OUT/results.md. Other options are those "
        "of `finetune train` and apply to every trial.",
    )
    _add_run_inputs(sweep, out_help="sweep directory")
    sweep.add_argument(
        "--param", action="append", metavar="NAME=V1,V2", help="an option and its choices"
    )
    sweep.add_argument("--method", default="grid", help="grid, random or optuna")
    sweep.add_argument("--trials", type=int, help="trials for random and optuna (default: all)")
    _add_train_options(sweep)
    sweep.set_defaults(func=_cmd_sweep)

    _add_eval_parsers(commands)
    _add_rate_parser(commands)
    _add_monitor_parsers(commands)
    demo = commands.add_parser(
        "demo",
        help="run the main job on the embedded default",
        description="Load the embedded corpora, build the base model and report its perplexity.",
    )
    demo.add_argument("--size", default="default", help="base model size: default or micro")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _add_prepare_parser(commands) -> None:
    from evalkit.contamination import NGRAM

    p = commands.add_parser(
        "prepare",
        help="clean, scrub, deduplicate, balance and split raw chats into a dataset",
        description="Turn raw chat files into a dataset directory (train/validation/test.jsonl, "
        "manifest.json, dropped.jsonl, report.md). Every record read is kept or dropped with its "
        "file, line and reason.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="FILE or NAME=FILE (source name)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    p.add_argument("--format", default="auto", help="auto, messages, sharegpt, alpaca or csv")
    p.add_argument("--prompt-column", default="prompt", help="CSV prompt column")
    p.add_argument("--response-column", default="response", help="CSV response column")
    p.add_argument("--strict", action="store_true", help="exit non-zero on any bad record")
    p.add_argument("--strip-html", action="store_true", help="remove HTML tags from turns")
    p.add_argument("--system-prompt", default="keep", help="keep or remove system turns")
    p.add_argument("--default-system", metavar="TEXT", help="add this system turn where none")
    p.add_argument("--model", metavar="DIR", help="model whose tokenizer measures tokens")
    p.add_argument("--min-tokens", type=int, help="drop conversations shorter than this")
    p.add_argument("--max-tokens", type=int, help="drop conversations longer than this")
    p.add_argument("--require", action="append", metavar="FIELD=VALUE", help="keep only these")
    p.add_argument("--exclude", action="append", metavar="FIELD=VALUE", help="drop these")
    p.add_argument("--no-pii", action="store_true", help="do not scrub PII")
    p.add_argument("--no-dedup", action="store_true", help="no deduplication at all")
    p.add_argument("--no-near-dedup", action="store_true", help="exact deduplication only")
    p.add_argument("--near-dup-threshold", type=float, default=0.8, help="Jaccard (default 0.8)")
    p.add_argument(
        "--near-dup-action", default="drop", help="drop, or group (keep them in one split)"
    )
    p.add_argument("--balance-by", metavar="FIELD", help="metadata field to balance, e.g. topic")
    p.add_argument("--cap", type=int, help="at most this many records per class")
    p.add_argument("--upsample-to", type=int, help="repeat training records of small classes")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test shares")
    p.add_argument("--group-by", default="conversation_id", help="records kept in one split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-set", action="append", metavar="NAME=FILE", help="check overlap")
    p.add_argument(
        "--ngram", type=int, default=NGRAM, help=f"n-gram size for contamination (default: {NGRAM})"
    )
    p.add_argument("--drop-contaminated", action="store_true", help="drop overlapping records")
    p.add_argument("--max-length", type=int, default=1024, help="report truncation at this")
    p.set_defaults(func=_cmd_data_prepare)


def _add_eval_parsers(commands) -> None:
    from evalkit.metrics import REFERENCE_METRICS

    ev = commands.add_parser(
        "eval",
        help="evaluate a model on a suite into a run in the store",
        description="Run every task of a suite (perplexity, generation with reference metrics "
        "and degeneration flags, bias probes) on a model directory. Per-example rows go into "
        "the workspace store; generations are cached, so a second run regenerates nothing.",
    )
    ev.add_argument("--model", required=True, metavar="DIR", help="model directory (HF format)")
    ev.add_argument("--suite", required=True, metavar="FILE", help="suite TOML")
    ev.add_argument("--name", help="a name for the run (usable instead of its id)")
    ev.add_argument("--batch-size", type=_positive, default=16)
    ev.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    ev.set_defaults(func=_cmd_eval)
    score = commands.add_parser(
        "score",
        help="BLEU, chrF and TER of a hypothesis file against a reference file",
        description="sacrebleu's corpus scores of two files, a segment a line, with their "
        "signatures: the numbers evaluation runs store, for outputs made elsewhere.",
    )
    score.add_argument("reference", help="reference file, one segment a line")
    score.add_argument("-i", "--input", required=True, help="hypothesis file, the same lines")
    score.add_argument(
        "-m", "--metrics", nargs="+", choices=REFERENCE_METRICS, default=list(REFERENCE_METRICS)
    )
    score.set_defaults(func=_cmd_score)
    runs = commands.add_parser("runs", help="list evaluation runs, or show one")
    runs.add_argument("run", nargs="?", help="a run id (or unique prefix, or name) to show")
    runs.set_defaults(func=_cmd_runs)
    cmp = commands.add_parser(
        "compare",
        help="compare two runs example by example",
        description="For each metric: the difference candidate - baseline with a paired "
        "bootstrap interval (95% unless --alpha), a paired test's p-value (permutation, "
        "McNemar, or sacrebleu's paired bootstrap) and the smallest change the sample detects "
        "at 80% power, optionally broken down by a metadata field.",
    )
    cmp.add_argument("baseline", help="baseline run (id, prefix or name)")
    cmp.add_argument("candidate", help="candidate run")
    cmp.add_argument("--by", action="append", metavar="FIELD", help="break down by this field")
    cmp.add_argument(
        "--resamples",
        type=int,
        help=f"bootstrap resamples, at least {MIN_RESAMPLES} (default {N_RESAMPLES})",
    )
    cmp.add_argument("--seed", type=int, help=f"bootstrap seed (default {SEED})")
    cmp.add_argument("--alpha", type=float, help=f"significance level (default {ALPHA})")
    cmp.add_argument(
        "--spec",
        help="a gate spec: use its alpha, resamples and seed unless given above, and warn where "
        "the sample is too small to detect a rule's threshold",
    )
    cmp.add_argument("--json", action="store_true", help="print every number as JSON")
    cmp.set_defaults(func=_cmd_compare)
    gate = commands.add_parser(
        "gate",
        help="judge a candidate against the baseline; exit 0 pass, 1 regression, 2 error",
        description="Apply the rules of a gate spec to the comparison of two runs and write "
        "report.md, report.html and report.json. Exit code 0: pass, 1: regression, 2: error.",
    )
    gate.add_argument("--baseline", required=True, help="the run of the model in production")
    gate.add_argument("--candidate", required=True, help="the run of the new model")
    gate.add_argument("--spec", required=True, metavar="FILE", help="gate spec TOML")
    gate.add_argument("--out", metavar="DIR", help="report folder (default: WORKSPACE/reports/)")
    gate.set_defaults(func=_cmd_gate)


def _rate_selection(args: argparse.Namespace):
    from evalkit.rating.sources import Selection

    return Selection(
        kind=getattr(args, "kind", "single"),
        slice_field=args.slice_field,
        per_slice=args.per_slice,
        seed=args.seed,
        priority=args.priority,
        overlap=args.overlap,
    )


def _cmd_rate_enqueue(args: argparse.Namespace) -> None:
    from datetime import date

    from evalkit.rating.queue import add_items
    from evalkit.rating.sources import items_from_comparison, items_from_events, items_from_run
    from evalkit.store import open_store
    from evalkit.workspace import open_workspace

    selection = _rate_selection(args)
    with open_store(_store(args)) as con:
        if args.source == "run":
            items = items_from_run(con, args.run, selection)
        elif args.source == "compare":
            items = items_from_comparison(con, args.baseline, args.candidate, selection)
        else:
            try:
                since, until = (
                    date.fromisoformat(d) if d else None for d in (args.since, args.until)
                )
            except ValueError as exc:
                raise EvalkitError(f"--since/--until: {exc}", hint="dates are YYYY-MM-DD") from None
            events = open_workspace(args.workspace).events_dir
            items = items_from_events(
                events, selection, select=args.select.replace("-", "_"), since=since, until=until
            )
        added = add_items(con, items, batch=args.batch)
    print(f"queued {added} new items ({len(items) - added} already queued)")


def _cmd_rate_annotator(args: argparse.Namespace) -> None:
    from evalkit.rating.queue import add_annotator
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        for name in args.names:
            print(f"{name}: {'added' if add_annotator(con, name) else 'already registered'}")


def _rate_rating(text: str, option: str):
    from evalkit.rating.rubric import Rating

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalkitError(
            f"{option}: not JSON ({exc})", hint='e.g. {"thumbs": "up"} or {"choice": "A"}'
        ) from None
    if not isinstance(data, dict):
        raise EvalkitError(f"{option}: expected a JSON object", hint='e.g. {"thumbs": "up"}')
    return Rating.from_dict(data)


def _cmd_rate_gold(args: argparse.Namespace) -> None:
    from evalkit.rating.queue import set_gold
    from evalkit.rating.rubric import load_rubric
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        set_gold(
            con, args.item, _rate_rating(args.answer, "--answer"), rubric=load_rubric(args.rubric)
        )
    print(f"item {args.item} is now a hidden gold item")


def _cmd_rate_status(args: argparse.Namespace) -> None:
    from evalkit.rating.report import format_status
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        print(format_status(con))


def _cmd_rate_claim(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from evalkit.rating.queue import QueueConfig, claim_next
    from evalkit.store import open_store

    config = QueueConfig(lease_ttl_s=args.lease_ttl, gold_every=args.gold_every, seed=args.seed)
    with open_store(_store(args)) as con:
        got = claim_next(con, args.annotator, config)
    print(json.dumps(asdict(got) if got else None, default=str, ensure_ascii=False, indent=2))


def _cmd_rate_submit(args: argparse.Namespace) -> None:
    from evalkit.rating.queue import submit
    from evalkit.rating.rubric import load_rubric
    from evalkit.store import open_store

    rating = _rate_rating(args.rating, "--rating")
    with open_store(_store(args)) as con:
        rating_id = submit(
            con,
            args.annotator,
            args.item,
            rating,
            rubric=load_rubric(args.rubric),
            shown_ms=args.shown_ms,
        )
    print(f"rating {rating_id} stored")


def _cmd_rate_agreement(args: argparse.Namespace) -> None:
    from evalkit.rating.report import agreement_report
    from evalkit.rating.rubric import load_rubric
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        report = agreement_report(
            con, load_rubric(args.rubric), n_resamples=args.resamples, seed=args.seed
        )
    if not report:
        print("no ratings yet")
    for label, result in report:
        print(f"{label:<24}{result}")


def _cmd_rate_ranking(args: argparse.Namespace) -> None:
    from evalkit.rating.report import format_ranking, ranking_report
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        ranking, comparisons = ranking_report(
            con,
            threshold=args.threshold,
            power=args.power,
            n_resamples=args.resamples,
            seed=args.seed,
        )
    print(format_ranking(ranking, comparisons))


def _cmd_rate_export(args: argparse.Namespace) -> None:
    from evalkit.rating.export import export
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        count = export(con, args.format, args.out, likert_threshold=args.likert_threshold)
    print(f"wrote {count} {args.format} rows to {args.out}")


def _add_monitor_parsers(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model behind an OpenAI-compatible API, logging every exchange",
        description="Serve a model directory at /v1/chat/completions (plain and streamed), with "
        "/v1/models, /v1/feedback, /v1/events, /healthz, /readyz and /metrics (Prometheus). "
        "Every exchange goes to WORKSPACE/events (Parquet). Binds 127.0.0.1 unless told "
        "otherwise; another address needs --api-key-file.",
    )
    serve.add_argument("--model", required=True, help="model directory (Hugging Face format)")
    serve.add_argument("--name", help="the model's name in the API (default: the directory's)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key-file", metavar="FILE", help="API keys, one a line")
    serve.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    serve.add_argument(
        "--allow-template-mismatch",
        action="store_true",
        help="serve a chat template other than the one the model was trained with",
    )
    serve.add_argument("--max-batch", type=_positive, default=32, help="requests decoded together")
    serve.add_argument(
        "--max-waiting", type=_positive, default=256, help="requests waiting; more get 429"
    )
    serve.add_argument(
        "--flush-events", type=_positive, default=1000, help="write the log every N events"
    )
    serve.add_argument(
        "--flush-seconds", type=float, default=1.0, help="or when the oldest is this old"
    )
    serve.add_argument(
        "--wal", action="store_true", help="fsync each event first: a crash loses none"
    )
    serve.set_defaults(func=_cmd_serve)

    monitor = commands.add_parser("monitor", help="what the served models did: the event log")
    monitor_commands = monitor.add_subparsers(
        dest="monitor_command", required=True, metavar="COMMAND"
    )
    events = monitor_commands.add_parser(
        "events",
        help="a summary of the logged exchanges and the latest ones",
        description="Exchanges per model and status with their feedback and latency, then the "
        "latest exchanges; --export writes them as conversation JSONL for data preparation.",
    )
    events.add_argument("--since", help="only events from this time on (ISO 8601)")
    events.add_argument("--limit", type=_positive, default=20, help="latest exchanges shown")
    events.add_argument("--export", metavar="FILE", help="write conversation JSONL instead")
    events.set_defaults(func=_cmd_monitor_events)
    imported = monitor_commands.add_parser(
        "import",
        help="recorded exchanges (JSONL, CSV or Parquet) into the event log",
        description="Write each row of FILE to the event log as an exchange, timestamps kept "
        "as given; --map renames the file's columns to the log's (prompt, response, model, "
        "timestamp, latency_s, ...); other columns go into metadata.",
    )
    imported.add_argument("file", help="JSONL, CSV or Parquet")
    imported.add_argument(
        "--map", action="append", metavar="SRC=DEST", help="a file column to a log column"
    )
    imported.set_defaults(func=_cmd_monitor_import)


def _add_rate_parser(commands) -> None:
    rate = commands.add_parser(
        "rate",
        help="the human-rating queue: enqueue, status, agreement, ranking, export",
        description="Queue model responses for annotators (from a run, a comparison of two "
        "runs, or production events), follow the queue, measure agreement, rank models from "
        "pairwise judgements and export SFT/DPO/KTO data. Items are claimed and rated in the "
        "app; `claim` and `submit` do the same from scripts.",
    )
    sub = rate.add_subparsers(dest="rate_command", required=True, metavar="COMMAND")
    enqueue = sub.add_parser("enqueue", help="queue items from a run, a comparison or events")
    sources = enqueue.add_subparsers(dest="source", required=True, metavar="SOURCE")
    run = sources.add_parser("run", help="the generated responses of a run")
    run.add_argument("run", help="run id, prefix or name")
    compare = sources.add_parser(
        "compare", help="A/B pairs: baseline and candidate on the same prompts (order randomized)"
    )
    compare.add_argument("baseline", help="baseline run")
    compare.add_argument("candidate", help="candidate run")
    events = sources.add_parser("events", help="production exchanges from WORKSPACE/events")
    events.add_argument(
        "--select", default="low-feedback", help="low-feedback (default), drift or random"
    )
    events.add_argument("--since", metavar="YYYY-MM-DD", help="first day read")
    events.add_argument("--until", metavar="YYYY-MM-DD", help="last day read")
    for p in (run, compare, events):
        if p is not compare:
            p.add_argument("--kind", default="single", help="single (default) or correction")
        p.add_argument("--slice-field", metavar="FIELD", help="metadata field (or event column)")
        p.add_argument("--per-slice", type=int, metavar="N", help="items per slice (default: all)")
        p.add_argument("--seed", type=int, default=0, help="sampling and A/B order seed")
        p.add_argument("--priority", type=int, default=0, help="higher is served first")
        p.add_argument("--overlap", type=int, default=1, help="distinct annotators per item")
        p.add_argument("--batch", help="a name for this batch of items")
        p.set_defaults(func=_cmd_rate_enqueue)
    annotator = sub.add_parser("annotator", help="register annotators")
    annotator.add_argument("names", nargs="+", metavar="NAME")
    annotator.set_defaults(func=_cmd_rate_annotator)
    gold = sub.add_parser("gold", help="make an item a hidden gold item with a known answer")
    gold.add_argument("item", help="item id")
    gold.add_argument("--answer", required=True, metavar="JSON", help='e.g. {"choice": "A"}')
    gold.set_defaults(func=_cmd_rate_gold)
    status = sub.add_parser("status", help="the queue and each annotator's pace and gold accuracy")
    status.set_defaults(func=_cmd_rate_status)
    claim = sub.add_parser("claim", help="lease the next item to an annotator (prints JSON)")
    claim.add_argument("annotator")
    claim.add_argument("--lease-ttl", type=float, default=600.0, help="seconds (default 600)")
    claim.add_argument("--gold-every", type=int, default=10, help="a gold item every N (0: none)")
    claim.add_argument("--seed", type=int, default=0, help="order among equal items")
    claim.set_defaults(func=_cmd_rate_claim)
    submit = sub.add_parser("submit", help="store an annotator's rating of a leased item")
    submit.add_argument("annotator")
    submit.add_argument("item", help="item id")
    submit.add_argument(
        "--rating",
        required=True,
        metavar="JSON",
        help='{"scores": {...}}, {"thumbs": "up"}, {"choice": "B"}, {"corrected": "..."} '
        'or {"skip_reason": "..."}',
    )
    submit.add_argument("--shown-ms", type=int, help="how long the item was shown")
    agreement = sub.add_parser(
        "agreement", help="Krippendorff's alpha and Cohen's/Fleiss' kappa with bootstrap CIs"
    )
    ranking = sub.add_parser(
        "ranking", help="Bradley-Terry strengths, win rates and judgements still needed"
    )
    ranking.add_argument("--threshold", type=float, default=0.5, help="win rate the gate needs")
    ranking.add_argument("--power", type=float, default=0.8, help="power for the planner")
    for p in (gold, submit, agreement):
        p.add_argument("--rubric", metavar="FILE", help="rubric TOML (default: the shipped one)")
    for p in (agreement, ranking):
        p.add_argument("--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples")
        p.add_argument("--seed", type=int, default=0)
    submit.set_defaults(func=_cmd_rate_submit)
    agreement.set_defaults(func=_cmd_rate_agreement)
    ranking.set_defaults(func=_cmd_rate_ranking)
    export = sub.add_parser("export", help="SFT, DPO or KTO JSONL (TRL's formats) from ratings")
    export.add_argument("format", help="sft, dpo or kto")
    export.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write")
    export.add_argument(
        "--likert-threshold", type=float, default=4.0, help="kto: mean score counted as good"
    )
    export.set_defaults(func=_cmd_rate_export)


def _configure_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbosity == 0:  # read by transformers when (and if) a command imports it
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        code = args.func(args)
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not a regression: CI must not read it as exit 1
        log.exception("internal error")
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
