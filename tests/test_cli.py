import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from evalkit.cli import build_parser, main


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


ALL_COMMANDS = list(_subcommands(build_parser()))


def test_the_main_jobs_are_listed():
    assert {
        ("data",),
        ("finetune",),
        ("demo",),
        ("data", "corpus"),
        ("finetune", "base-model"),
    } <= set(ALL_COMMANDS)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: evalkit " + " ".join(command))


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom evalkit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False False")


def test_unknown_corpus_suggests_the_closest_name(tmp_path, capsys):
    assert main(["data", "corpus", "chitcht", "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "unknown corpus 'chitcht'" in err and "did you mean: chitchat?" in err
    assert "Traceback" not in err


def test_data_corpus_writes_conversation_jsonl(tmp_path):
    out = tmp_path / "topics.jsonl"
    assert main(["data", "corpus", "topics", "--out", str(out)]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["messages"][0]["role"] == "user" and first["topic"]


def test_unwritable_workspace_names_the_path(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["--workspace", str(blocker / "ws"), "demo", "--quick"]) == 2
    err = capsys.readouterr().err
    assert str(blocker / "ws") in err and "cannot be written" in err


def test_base_model_command_reports_perplexity(micro_workspace, micro_model, capsys):
    assert (
        main(
            ["--workspace", str(micro_workspace.root), "finetune", "base-model", "--size", "micro"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert str(micro_model) in out and "validation perplexity" in out


def test_an_output_path_in_the_way_is_a_message(tmp_path, capsys):
    refs = tmp_path / "refs.txt"
    refs.write_text("not a folder")
    assert main(["data", "corpus", "topics", "--out", str(refs / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {refs / 'x.jsonl'}: {refs} is a file" in err and "Traceback" not in err


def test_any_path_error_is_a_message_naming_the_path(tmp_path, make_run, capsys):
    """The gate writes its reports itself: the CLI's one handler names the path in the way."""
    from evalkit.store import open_store
    from evalkit.workspace import open_workspace

    ws = open_workspace(tmp_path / "ws")
    with open_store(ws.store_path) as con:
        make_run(con, "base")
        make_run(con, "cand", shift=0.5)
    spec = tmp_path / "gate.toml"
    spec.write_text('[[rules]]\nmetric = "perplexity"\nmax_relative_increase = 0.5\n')
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["--workspace", str(ws.root), "gate", "--baseline", "base", "--candidate", "cand"]
    assert main([*args, "--spec", str(spec), "--out", str(blocker / "reports")]) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, so it cannot hold a folder" in err
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize(
    ("config", "flags", "message"),
    [
        ("", ["--learning-rate", "-1"], "learning_rate -1.0: must be at least 0"),
        ('learning_rate = "fast"\n', [], "learning_rate 'fast': expected a number"),
        ("[lora]\nr = 4\n", [], "lora {'r': 4}: expected true or false"),
        ("lora_dropout = 1.5\n", [], "lora_dropout 1.5: must be at least 0 and below 1"),
    ],
)
def test_training_numbers_are_checked_by_the_config(tmp_path, capsys, config, flags, message):
    file = tmp_path / "train.toml"
    file.write_text(config)
    args = ["finetune", "train", "--base", "b", "--data", "d", "--out", str(tmp_path / "o")]
    assert main([*args, "--config", str(file), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_closed_pipe_ends_quietly(tmp_path, make_run):
    from evalkit.store import open_store
    from evalkit.workspace import open_workspace

    ws = open_workspace(tmp_path / "ws")
    with open_store(ws.store_path) as con:
        make_run(con, "base")
        make_run(con, "cand", shift=0.5)
    read, write = os.pipe()
    os.close(read)  # as `| head -c 10` has, once it has read its 10 bytes
    command = [sys.executable, "-m", "evalkit.cli", "--workspace", str(ws.root)]
    done = subprocess.run(
        [*command, "compare", "base", "cand", "--json", "--resamples", "1000"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def _options(parser, prefix=()):
    """(command, action) for every argument of every command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*prefix, name))
        elif action.dest != "help":
            yield " ".join(prefix), action


@pytest.mark.parametrize(
    ("command", "action"),
    list(_options(build_parser())),
    ids=[
        f"{c} {a.option_strings[-1] if a.option_strings else a.dest}"
        for c, a in _options(build_parser())
    ],
)
def test_every_argument_has_help_that_gives_its_default_once(command, action):
    assert action.help and action.help is not argparse.SUPPRESS, "no help"
    assert action.help.lower().count("default") <= 1


@pytest.mark.parametrize("command", [("finetune", "train"), ("finetune", "sweep")])
def test_required_training_inputs_are_shown_as_required(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: evalkit {' '.join(command)} --base DIR --data DIR --out DIR ")
    assert "required (here, or as base, data and out in --config)" in out


def test_rate_help_names_only_what_exists(capsys):
    with pytest.raises(SystemExit):
        main(["rate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    commands = {c[0] for c in ALL_COMMANDS}
    for words in re.findall(r"`evalkit (\w+)", out):
        assert words in commands
    assert "`claim` and `submit`" in out and "`evalkit app`" in out
