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
NOTHING_TO_RATE = 3  # `rate claim`'s exit code when no item is left for the annotator


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
    "allow_modified": "train on split files that differ from manifest.json (named in the lineage)",
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
    # Required, but a --config file may give them instead: argparse cannot require them itself.
    parser.usage = "%(prog)s --base DIR --data DIR --out DIR [--config FILE] [OPTION ...]"
    needed = parser.add_argument_group("required (here, or as base, data and out in --config)")
    needed.add_argument("--base", metavar="DIR", help="base model directory (Hugging Face format)")
    needed.add_argument("--data", metavar="DIR", help="dataset directory (`evalkit data prepare`)")
    needed.add_argument("--out", metavar="DIR", help=out_help)
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
    result = train(config, resume=args.resume)
    if result.rank == 0:
        print(result.describe(bold=sys.stdout.isatty()))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from finetune.sweep import parse_space, sweep

    space = parse_space(args.param or [])
    config = _train_config(args)
    for name in ("base", "data"):
        if not getattr(config, name):
            raise EvalkitError(f"--{name} is required (or set it in --config)")
    if not args.out:
        raise EvalkitError("--out is required: the sweep directory")
    result = sweep(
        config, space, args.out, method=args.method, trials=args.trials, seed=config.seed
    )
    print((Path(args.out) / "results.md").read_text(), end="")
    print(
        f"{len(result.ranked)} ranked, {len(result.failed)} failed, {len(result.stopped)} "
        f"stopped; results in {args.out}/results.json and results.md"
    )
    return result.exit_code


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
        progress=True,
    )
    if done is not None:  # None: another process of a torchrun launch, which writes nothing
        print(done.describe())


def _cmd_runs(args: argparse.Namespace) -> None:
    from evalkit.store import open_store

    action, refs = (args.words[0], args.words[1:]) if args.words else (None, [])
    if action not in ("rm", "rename"):
        action, refs = ("show" if args.words else "list"), args.words
    if _shows_examples(args) and action != "show":
        raise EvalkitError("--examples, --task, --worst, --jsonl and --limit show one run's rows")
    wanted = {"list": 0, "show": 1, "rename": 2}.get(action, max(len(refs), 1))  # rm: 1 or more
    if len(refs) != wanted:
        raise EvalkitError(
            f"runs {' '.join(args.words)}: expected RUN, rm RUN [RUN ...] or rename RUN NAME"
        )
    act = {"list": _list_runs, "show": _show_run, "rm": _remove_runs, "rename": _rename_run}
    with open_store(_store(args)) as con:
        act[action](con, refs, args)


def _shows_examples(args: argparse.Namespace) -> bool:
    return bool(args.examples or args.task or args.worst or args.jsonl or args.limit)


def _list_runs(con, refs: list[str], args: argparse.Namespace) -> None:
    from evalkit.results import latest_complete, list_runs

    runs = list_runs(con)
    if not runs:
        print("no evaluation runs yet: `evalkit eval --model DIR --suite FILE`")
    for r in runs:
        name = r["name"] or ""
        if name and latest_complete(con, name) not in (None, r["run_id"]):
            name += " (superseded)"
        print(
            f"{r['run_id']}  {r['status']:<8}  {str(r['started_at'])[:19]}  "
            f"{r['suite_name']}  model {(r['model_hash'] or '')[:12]}  {name}"
        )


def _show_run(con, refs: list[str], args: argparse.Namespace) -> None:
    from evalkit.compare import finite
    from evalkit.examples import format_examples, run_examples
    from evalkit.results import get_run

    (ref,) = refs
    if not _shows_examples(args):
        print(json.dumps(get_run(con, ref), indent=2, default=str))
        return
    examples = run_examples(con, ref, task=args.task, worst=args.worst, limit=args.limit)
    if args.jsonl:
        for e in examples:
            print(json.dumps(finite(e), ensure_ascii=False, default=str))
    elif examples:
        print(format_examples(examples, args.worst))


def _remove_runs(con, refs: list[str], args: argparse.Namespace) -> None:
    from evalkit.results import remove_run

    for ref in refs:
        run = remove_run(con, ref)
        print(f"removed run {run['run_id']} ({run['status']}, {run['name'] or 'no name'})")


def _rename_run(con, refs: list[str], args: argparse.Namespace) -> None:
    from evalkit.results import rename_run

    ref, name = refs
    print(f"run {rename_run(con, ref, name)} is now called {name!r}")


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
    for warning in report.warnings:
        print(f"warning: {warning}")
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
        engine=args.engine,
        workers=args.workers,
        log=LogConfig(max_events=args.flush_events, max_age_s=args.flush_seconds, wal=args.wal),
    )
    workspace = open_workspace(args.workspace)
    drift = None
    if args.drift_reference:
        from monitor.server import DriftSetup

        drift_config, featurizer, reference, notes = _drift_setup(args, workspace, "drift_")
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        drift = DriftSetup(
            reference, drift_config, featurizer, args.drift_every, args.drift_reference
        )
    serve(config, workspace.events_dir, workspace.store_path, drift)


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


def _duration(text: str) -> float:
    """An argparse type: seconds, or a duration such as 30s, 15m, 1h."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30s, 15m, 1h)") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def _drift_config(args: argparse.Namespace, prefix: str = ""):
    from monitor.drift.detector import DriftConfig

    get = lambda name: getattr(args, prefix + name)  # noqa: E731
    features = [f.strip() for f in get("features").split(",")] if get("features") else None
    options = {"features": tuple(features)} if features else {}
    window_events, window_s = get("window_events"), get("window")
    if window_events is None and window_s is None:
        window_events = 1000
    return DriftConfig(window_events=window_events, window_s=window_s, hold=get("hold"), **options)


def _drift_setup(args: argparse.Namespace, workspace, prefix: str = ""):
    """The drift config, featurizer and reference that ``monitor drift`` and ``serve`` use."""
    from finetune.data.corpora import labelled_prompts
    from monitor.drift.job import load_reference, open_featurizer

    config = _drift_config(args, prefix)
    featurizer, topics = open_featurizer(workspace.drift_dir, labelled_prompts)
    mapping = _key_values(getattr(args, prefix + "map"), "--map")
    spec = getattr(args, prefix + "reference")
    reference = load_reference(
        spec, workspace.events_dir, featurizer, config, mapping, workspace.store_path
    )
    notes = [topics, f"reference: {spec}, {reference.size} exchanges", *reference.notes]
    return config, featurizer, reference, notes


def _print_results(results) -> None:
    print(
        f"{'feature':<18} {'statistic':<15} {'value':>8} {'threshold':>9} {'p (adj.)':>9}  decision"
    )
    for r in results:
        value = "n/a" if r.value != r.value else f"{r.value:.4f}"
        p = "-" if r.p_adjusted != r.p_adjusted else f"{r.p_adjusted:.2g}"
        decision = "DRIFT" if r.drifted else ("too few" if value == "n/a" else "ok")
        print(
            f"{r.feature:<18} {r.statistic:<15} {value:>8} {r.threshold:>9.3g} {p:>9}  {decision}"
        )


def _cmd_monitor_drift(args: argparse.Namespace) -> int:
    import time

    from evalkit.workspace import open_workspace
    from monitor.drift.job import DriftJob

    workspace = open_workspace(args.workspace)
    config, featurizer, reference, notes = _drift_setup(args, workspace)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    metrics = None
    if args.metrics_port:
        from prometheus_client import CollectorRegistry, start_http_server

        from monitor.metrics import drift_metrics

        registry = CollectorRegistry()
        metrics = drift_metrics(registry)
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    job = DriftJob(
        reference, config, workspace.events_dir, featurizer, every=args.every or 0,
        model=args.model or "all", reference_label=args.reference,
        store=workspace.store_path, metrics=metrics, filter_model=bool(args.model),
    )  # fmt: skip
    while True:
        result, changes = job.run_once()
        frame = result.frame
        print(f"window: {len(frame)} exchanges, {frame.event_ids[0]} .. {frame.event_ids[-1]}")
        _print_results(result.window.results)
        for change in changes:
            print(f"alert {change['state']}: drift of {change['feature']}")
        if not args.every:
            return 1 if result.window.drifted else 0
        time.sleep(args.every)


def _cmd_monitor_backtest(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from evalkit.workspace import open_workspace
    from finetune.data.corpora import labelled_prompts
    from monitor.drift.detector import Detector, backtest, build_reference
    from monitor.drift.features import check_order, open_events
    from monitor.drift.job import open_featurizer

    config = _drift_config(args)
    featurizer, topics = open_featurizer(open_workspace(args.workspace).drift_dir, labelled_prompts)
    mapping = _key_values(args.map, "--map")
    frames = []
    for path in (args.reference, args.current):
        con = open_events(path, mapping)
        try:
            if path == args.current:
                check_order(con, path)
            frames.append(featurizer.read(con))
        finally:
            con.close()
    (ref_frame, ref_embeddings), (frame, embeddings) = frames
    reference = build_reference(ref_frame, ref_embeddings, config)
    result = backtest(Detector(reference, config, frame, embeddings))

    def stamp(micros):
        return None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC).isoformat()

    alerts = [
        {
            "feature": a.feature,
            "start": stamp(a.started_at),
            "end": stamp(a.ended_at),
            "fired_index": a.fired_index,
            "first_index": a.first_index,
            "last_index": a.last_index,
        }
        for a in result.alerts
    ]
    if args.json:
        print(json.dumps({"windows": len(result.windows), "events": len(frame), "alerts": alerts}))
        return 1 if alerts else 0
    for note in [topics, *reference.notes]:
        print(f"note: {note}", file=sys.stderr)
    print(f"{len(frame)} events, {len(result.windows)} windows, {len(alerts)} alerts")
    if alerts:
        print(f"{'feature':<18} {'start':<32} {'end':<32} {'fired at event':>14}")
    for a in alerts:
        print(f"{a['feature']:<18} {a['start']:<32} {a['end'] or '(still firing)':<32} "
              f"{a['fired_index']:>14}")  # fmt: skip
    return 1 if alerts else 0


def _cmd_monitor_replay(args: argparse.Namespace) -> None:
    from finetune.data.corpora import load_chitchat, load_support_faq, load_topics, read_jsonl
    from monitor.replay import replay

    def first_turns(records):
        return [r["messages"][0]["content"] for r in records if r.get("messages")]

    calm = first_turns(read_jsonl(args.calm) if args.calm else load_support_faq())
    drift = first_turns(read_jsonl(args.drift) if args.drift else load_topics() + load_chitchat())
    key = Path(args.api_key_file).read_text().split()[0] if args.api_key_file else None
    done = replay(
        args.url, calm, drift, rate=args.rate, duration=args.duration,
        drift_after=args.drift_after, api_key=key, seed=args.seed,
    )  # fmt: skip
    failed = ", ".join(f"{n} {why}" for why, n in done.failed.items()) or "none"
    print(f"sent {done.sent}, answered {done.answered}, failed: {failed}")


def _cmd_monitor_alerts(args: argparse.Namespace) -> None:
    from evalkit.workspace import open_workspace
    from monitor.alerts import firing

    store = None if args.prometheus else open_workspace(args.workspace).store_path
    for alert in firing(args.prometheus, store):
        print("  ".join(f"{k} {v}" for k, v in alert.items()))


def _cmd_lineage(args: argparse.Namespace) -> None:
    from evalkit.lineage import build_graph, find, render, trace
    from evalkit.workspace import open_workspace

    graph = build_graph(open_workspace(args.workspace), also=[args.id])
    tree = trace(graph, find(graph, args.id), limit=args.limit)
    print(json.dumps(tree, indent=2, default=str) if args.json else render(tree))


def _add_lineage_parser(commands) -> None:
    lineage = commands.add_parser(
        "lineage",
        help="what an artifact was built from, and what was built from it",
        description="The chain of any artifact back to the raw inputs and forward to what was "
        "built from it: datasets, training runs, models, eval runs, gate reports, served "
        "versions, events and ratings, as each of them recorded it.",
    )
    lineage.add_argument(
        "id",
        metavar="ID",
        help="dataset hash, training run or model directory, model hash, eval run id or name, "
        "gate report id, served version, event id or rating id (or a unique prefix)",
    )
    lineage.add_argument("--json", action="store_true", help="the tree as JSON")
    lineage.add_argument(
        "--limit",
        type=int,
        default=10,
        help="at most this many artifacts of a kind under each (default 10; 0: all)",
    )
    lineage.set_defaults(func=_cmd_lineage)


def _cmd_demo(args: argparse.Namespace) -> int:
    from evalkit.demo import run_demo

    summary = run_demo(args.workspace, quick=args.quick)
    return 0 if all(summary.claims.values()) else 1


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
        description="Each trial is a training run in OUT/trial-NNN; the finished trials are "
        "ranked by validation perplexity in OUT/results.json and OUT/results.md, failed and "
        "stopped ones listed apart. Other options are those of `finetune train` and apply to "
        "every trial. Exit code 0: every trial finished; 1: some failed; 2: none finished (or "
        "an error); 128 + signal (143 SIGTERM, 130 SIGINT): stopped, the same command resumes.",
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
    _add_app_parser(commands)
    _add_lineage_parser(commands)
    demo = commands.add_parser(
        "demo",
        help="run the closed loop on the embedded default, end to end",
        description="Fine-tune v1 on the support domain, evaluate and gate it, serve it with "
        "the drift monitor, replay traffic with a drift episode, have a simulated annotator "
        "rate and correct the drifted and low-rated exchanges, fine-tune v2 on that feedback, "
        "evaluate and gate it, and print a summary of what changed. Exit 1 when a claim of "
        "the summary does not hold.",
    )
    demo.add_argument(
        "--quick", action="store_true", help="the same loop on the micro model, in about a minute"
    )
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
    p.add_argument("--seed", type=int, default=0, help="seed of the split and sampling (default 0)")
    p.add_argument("--eval-set", action="append", metavar="NAME=FILE", help="check overlap")
    p.add_argument(
        "--ngram", type=int, default=NGRAM, help=f"n-gram size for contamination (default: {NGRAM})"
    )
    p.add_argument("--drop-contaminated", action="store_true", help="drop overlapping records")
    p.add_argument(
        "--max-length",
        type=int,
        help="count conversations longer than this (default: the --model's context length)",
    )
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
    ev.add_argument(
        "--batch-size",
        type=_positive,
        default=16,
        help="examples scored or generated together (default 16); lower it if memory runs out",
    )
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
        "-m",
        "--metrics",
        nargs="+",
        choices=REFERENCE_METRICS,
        default=list(REFERENCE_METRICS),
        metavar="METRIC",
        help=f"which of {', '.join(REFERENCE_METRICS)} (default: all)",
    )
    score.set_defaults(func=_cmd_score)
    runs = commands.add_parser(
        "runs",
        help="list, show, remove or rename evaluation runs",
        usage="evalkit runs [RUN [--examples] [--task T] [--worst METRIC] [--jsonl]]\n"
        "       evalkit runs rm RUN [RUN ...]\n"
        "       evalkit runs rename RUN NAME",
        description="With no RUN: every run, oldest first. With RUN (an id, a unique prefix of "
        "one, or a name; a name used by several runs means its latest complete run): its record "
        "as JSON, or with --examples its per-example prompts, references, outputs and scores. "
        "`rm` deletes runs and their rows; `rename` gives a run a new name.",
    )
    runs.add_argument(
        "words", nargs="*", metavar="RUN", help="a run to show; or rm RUN..., or rename RUN NAME"
    )
    runs.add_argument("--examples", action="store_true", help="show the run's examples")
    runs.add_argument("--task", help="only this task's examples")
    runs.add_argument("--worst", metavar="METRIC", help="worst first by this metric")
    runs.add_argument("--limit", type=_positive, metavar="N", help="at most N examples")
    runs.add_argument("--jsonl", action="store_true", help="examples as JSON lines, in full")
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
        help="judge a candidate against the baseline; exit 0 pass, 1 regression, 2 error, "
        "3 inconclusive",
        description="Apply the rules of a gate spec to the comparison of two runs and write "
        "report.md, report.html and report.json. Exit code 0: pass, 1: regression, 2: error, "
        "3: inconclusive (a rule could not be judged and the spec says inconclusive = 'fail').",
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


def _cmd_rate_claim(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from evalkit.rating.queue import QueueConfig, claim_next
    from evalkit.store import open_store

    config = QueueConfig(lease_ttl_s=args.lease_ttl, gold_every=args.gold_every, seed=args.seed)
    with open_store(_store(args)) as con:
        got = claim_next(con, args.annotator, config)
    if got is None:
        print(f"nothing to rate for {args.annotator}", file=sys.stderr)
        return NOTHING_TO_RATE
    print(json.dumps(asdict(got), default=str, ensure_ascii=False, indent=2))
    return 0


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
            prior=args.prior,
        )
    print(format_ranking(ranking, comparisons))


def _cmd_rate_items(args: argparse.Namespace) -> None:
    from evalkit.rating.report import format_items, list_items
    from evalkit.store import open_store

    with open_store(_store(args)) as con:
        items = list_items(con, batch=args.batch, kind=args.kind)
    print(format_items(items) if items else "no items queued: `evalkit rate enqueue ...`")


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
        "--engine",
        choices=("process", "thread"),  # monitor.server.ENGINES, not imported at start-up
        default="process",
        help="decode in a process of its own beside the HTTP side (default), or in a thread "
        "of the server's process",
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
    serve.add_argument(
        "--workers", type=_positive, default=1, help="processes, each with the model (1)"
    )
    _drift_options(serve, prefix="drift-")
    serve.add_argument(
        "--drift-every", type=_duration, default=60.0, help="judge drift every DURATION (1m)"
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

    drift = monitor_commands.add_parser(
        "drift",
        help="judge the latest window of the log against a reference",
        description="Compare the latest window of exchanges with a reference, feature by "
        "feature (effect size over its threshold and a test after Holm's correction), print "
        "the table, write the store and flag the events of a drifted window; an alert fires "
        "after --hold drifted windows in a row. Exit 1 when the window drifted. With --every "
        "it runs as a job, and --metrics-port exports the gauges.",
    )
    _drift_options(drift)
    drift.add_argument("--model", help="only this served model's exchanges")
    drift.add_argument("--every", type=_duration, help="run every DURATION (e.g. 1m) until stopped")
    drift.add_argument("--metrics-port", type=int, help="export the drift gauges on this port")
    drift.set_defaults(func=_cmd_monitor_drift)

    backtest = monitor_commands.add_parser(
        "backtest",
        help="replay recorded events through the drift windows and decisions",
        description="Replay the events of --current in their timestamp order through exactly "
        "the windows and decisions of `monitor drift`, against --reference, with simulated "
        "time; print when each alert would have started and ended (--json for tools: feature, "
        "start, end, the index of the event at which it fired and the first and last event of "
        "the windows that raised it). Exit 1 when an alert fired.",
    )
    _drift_options(backtest, reference_help="events file (JSONL, CSV or Parquet)")
    backtest.add_argument("--current", required=True, help="events file to replay")
    backtest.add_argument("--json", action="store_true", help="the alerts as JSON")
    backtest.set_defaults(func=_cmd_monitor_backtest)

    replayed = monitor_commands.add_parser(
        "replay",
        help="send test traffic to a running server: calm, then a drift episode",
        description="Send support questions (calm), then other chatterbot topics and chit-chat "
        "(drift, from --drift-after on), at --rate requests per second for --duration.",
    )
    replayed.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    replayed.add_argument("--rate", type=float, default=5.0, help="requests per second (5)")
    replayed.add_argument("--duration", type=_duration, default=60.0, help="how long (60s)")
    replayed.add_argument("--drift-after", type=_duration, help="when the drift episode starts")
    replayed.add_argument("--calm", help="conversation JSONL of calm prompts (support FAQ)")
    replayed.add_argument("--drift", help="conversation JSONL of drift prompts (topics, chit-chat)")
    replayed.add_argument("--api-key-file", help="a file whose first line is the API key")
    replayed.add_argument("--seed", type=int, default=0, help="which prompts, in which order")
    replayed.set_defaults(func=_cmd_monitor_replay)

    alerts = monitor_commands.add_parser(
        "alerts",
        help="the alerts firing now",
        description="Firing alerts from Prometheus's API (--prometheus URL), otherwise the "
        "drift alerts open in the store.",
    )
    alerts.add_argument("--prometheus", help="Prometheus's URL, e.g. http://127.0.0.1:9090")
    alerts.set_defaults(func=_cmd_monitor_alerts)


def _drift_options(parser, prefix: str = "", reference_help: str | None = None) -> None:
    """The options of a drift judgement; ``prefix`` (``drift-``) for `evalkit serve`'s."""
    parser.add_argument(
        f"--{prefix}reference",
        required=not prefix,
        metavar="SPEC",
        help=reference_help
        or "log:START..END (a period of the event log), run:RUN (an evaluation run's "
        "prompts and outputs) or file:PATH (an events file)",
    )
    parser.add_argument(
        f"--{prefix}map", action="append", metavar="SRC=DEST", help="an events file's column"
    )
    window = parser.add_mutually_exclusive_group()
    window.add_argument(f"--{prefix}window", type=_duration, help="a window of a duration (15m)")
    window.add_argument(
        f"--{prefix}window-events", type=_positive, help="a window of N exchanges (1000)"
    )
    parser.add_argument(
        f"--{prefix}hold", type=_positive, default=3, help="drifted windows in a row to alert (3)"
    )
    parser.add_argument(f"--{prefix}features", help="comma-separated (default: all)")


def _add_rate_parser(commands) -> None:
    rate = commands.add_parser(
        "rate",
        help="the human-rating queue: enqueue, status, agreement, ranking, export",
        description="Queue model responses for annotators (from a run, a comparison of two "
        "runs, or production events), follow the queue, measure agreement, rank models from "
        "pairwise judgements and export SFT/DPO/KTO data. Annotators rate on the web app's "
        "Rate page (`evalkit app`), or from scripts with `claim` and `submit`.",
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
    annotator.add_argument("names", nargs="+", metavar="NAME", help="annotator names")
    annotator.set_defaults(func=_cmd_rate_annotator)
    gold = sub.add_parser("gold", help="make an item a hidden gold item with a known answer")
    gold.add_argument("item", help="item id")
    gold.add_argument("--answer", required=True, metavar="JSON", help='e.g. {"choice": "A"}')
    gold.set_defaults(func=_cmd_rate_gold)
    status = sub.add_parser("status", help="the queue and each annotator's pace and gold accuracy")
    status.set_defaults(func=_cmd_rate_status)
    items = sub.add_parser("items", help="the queued items: ids, kinds, ratings so far, sources")
    items.add_argument("--batch", help="only this batch (a run id for a suite's sample)")
    items.add_argument("--kind", help="only single, pair or correction items")
    items.set_defaults(func=_cmd_rate_items)
    claim = sub.add_parser(
        "claim",
        help="lease the next item to an annotator (prints JSON)",
        description="Lease the next item to ANNOTATOR and print it as JSON. When nothing is "
        f"left for them, say so on stderr and exit {NOTHING_TO_RATE}, so a script can loop "
        "until the queue is done.",
    )
    claim.add_argument("annotator", help="a registered annotator (`rate annotator`)")
    claim.add_argument("--lease-ttl", type=float, default=600.0, help="seconds (default 600)")
    claim.add_argument("--gold-every", type=int, default=10, help="a gold item every N (0: none)")
    claim.add_argument("--seed", type=int, default=0, help="order among equal items")
    claim.set_defaults(func=_cmd_rate_claim)
    submit = sub.add_parser("submit", help="store an annotator's rating of a leased item")
    submit.add_argument("annotator", help="the annotator holding the item's lease")
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
    ranking.add_argument(
        "--prior",
        type=float,
        default=0.1,
        help="Bradley-Terry prior in wins: keeps strengths finite when a model wins all or "
        "none (0: the plain maximum-likelihood fit)",
    )
    for p in (gold, submit, agreement):
        p.add_argument("--rubric", metavar="FILE", help="rubric TOML (default: the shipped one)")
    for p in (agreement, ranking):
        p.add_argument(
            "--resamples",
            type=int,
            default=N_RESAMPLES,
            help=f"bootstrap resamples (default {N_RESAMPLES})",
        )
        p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
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


def _admin_password(args: argparse.Namespace) -> str:
    """The new admin's password: the first line of --password-file, else typed twice."""
    if args.password_file:
        try:
            return Path(args.password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise EvalkitError(
                f"--password-file {args.password_file}: cannot read a first line ({exc})",
                hint="write the password on the file's first line",
            ) from None
    import getpass

    password = getpass.getpass(f"password for {args.create_admin}: ")
    if getpass.getpass("again: ") != password:
        raise EvalkitError("the two passwords differ", hint="run the command again")
    return password


def _cmd_app(args: argparse.Namespace) -> int:
    from evalkit.workspace import open_workspace

    workspace = open_workspace(args.workspace)
    if args.create_admin:
        from evalkit.accounts import create_account
        from evalkit.store import open_store

        password = _admin_password(args)
        with open_store(workspace.store_path) as con:
            create_account(con, args.create_admin, password, "admin")
        print(f"admin {args.create_admin} created in {workspace.store_path}")
        return 0
    from dashboards.launch import run_app

    return run_app(
        workspace.root,
        host=args.host,
        port=args.port,
        prometheus=args.prometheus,
        session_hours=args.session_hours,
    )


def _add_app_parser(commands) -> None:
    app = commands.add_parser(
        "app",
        help="the web app: rate, release, watch drift, retrain (Streamlit)",
        description="Start the Streamlit app on the workspace's store, bound to 127.0.0.1 "
        "unless told otherwise. Create the first admin with --create-admin NAME.",
    )
    app.add_argument("--port", type=_positive, default=8501, help="port (default 8501)")
    app.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    app.add_argument(
        "--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace folder"
    )
    app.add_argument("--create-admin", metavar="NAME", help="create an admin account and exit")
    app.add_argument("--password-file", metavar="FILE", help="its password (default: prompted)")
    app.add_argument(
        "--prometheus",
        metavar="URL",
        help="read firing alerts from this Prometheus (default: $EVALKIT_PROMETHEUS_URL, else "
        "the drift alerts in the store)",
    )
    app.add_argument(
        "--session-hours",
        type=_positive,
        metavar="H",
        help="a sign-in survives reloads for H hours (default 12); sign-out ends it sooner",
    )
    app.set_defaults(func=_cmd_app)


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
        sys.stdout.flush()  # a reader that went away shows here, not at exit
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `| head` closed the pipe: stop quietly, with the status of a process that SIGPIPE
        # ended; what is still buffered goes nowhere instead of failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.filename is None:
            log.exception("internal error")
            return 2
        from evalkit.workspace import path_error

        print(f"error: {path_error(exc)}", file=sys.stderr)
        return 2
    except Exception:  # a bug, not a regression: CI must not read it as exit 1
        log.exception("internal error")
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
