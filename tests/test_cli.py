import json
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
    assert main(["--workspace", str(blocker / "ws"), "demo", "--size", "micro"]) == 2
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


def test_demo_runs_on_the_micro_model(micro_workspace, micro_model, capsys):
    assert main(["--workspace", str(micro_workspace.root), "demo", "--size", "micro"]) == 0
    out = capsys.readouterr().out
    assert "corpus chitchat: 7,168 conversations" in out
    assert "corpus support:" in out and "validation perplexity" in out
    assert "dataset: " in out and "dropped with their reasons" in out
