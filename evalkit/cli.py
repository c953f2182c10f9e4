"""The ``evalkit`` command: a thin layer over the library, one subcommand per job.

Each command parses its arguments, calls one library function and turns an
:class:`~evalkit.errors.EvalkitError` into a message and exit code 2. Heavy libraries are
imported inside the commands, so ``evalkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from evalkit import __version__
from evalkit.errors import EvalkitError

log = logging.getLogger("evalkit")


def _cmd_data_corpus(args: argparse.Namespace) -> None:
    from finetune.corpora import load_corpus, write_jsonl

    count = write_jsonl(load_corpus(args.name), args.out)
    print(f"wrote {count} conversations of {args.name} to {args.out}")


def _cmd_base_model(args: argparse.Namespace) -> None:
    from evalkit.workspace import open_workspace
    from finetune.base_model import base_model_config, build_base_model, summary

    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    config = base_model_config(args.size, **overrides)
    path = build_base_model(open_workspace(args.workspace), config, force=args.force)
    print(summary(path))


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

    demo = commands.add_parser(
        "demo",
        help="run the main job on the embedded default",
        description="Load the embedded corpora, build the base model and report its perplexity.",
    )
    demo.add_argument("--size", default="default", help="base model size: default or micro")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbosity == 0:  # read by transformers when (and if) a command imports it
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        args.func(args)
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
