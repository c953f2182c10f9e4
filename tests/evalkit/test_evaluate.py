"""`evalkit eval` on the micro model: what it says about the run it made."""

import re

from evalkit.cli import main


def test_eval_says_when_it_supersedes_a_name(micro_model, tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("the cat sat on the mat\nhello there\n")
    suite = tmp_path / "suite.toml"
    suite.write_text(
        '[datasets.t]\npath = "texts.txt"\n[[tasks]]\ntype = "perplexity"\ndataset = "t"\n'
    )
    args = ["--workspace", str(tmp_path / "ws"), "eval", "--model", str(micro_model)]
    args += ["--suite", str(suite), "--name", "prod"]
    assert main(args) == 0
    out = capsys.readouterr().out
    first = re.search(r"run (\w+) complete", out).group(1)
    assert "now means" not in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"the name 'prod' now means this run instead of {first}" in out


PROGRESS_SUITE = """
[datasets.texts]
path = "texts.txt"
[datasets.conv]
path = "conv.jsonl"
[[tasks]]
type = "perplexity"
dataset = "texts"
[[tasks]]
type = "generation"
dataset = "conv"
max_new_tokens = 4
metrics = ["length"]
[[tasks]]
type = "bias"
probes = "{probes}"
"""


def _progress_suite(tmp_path):
    import json
    from pathlib import Path

    samples = Path(__file__).resolve().parents[2] / "fixtures" / "bias_probes" / "samples"
    (tmp_path / "texts.txt").write_text("the cat sat on the mat\nhello there\n")
    conv = [{"messages": [{"role": "user", "content": f"hi {i}"}]} for i in range(3)]
    (tmp_path / "conv.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conv))
    suite = tmp_path / "suite.toml"
    suite.write_text(PROGRESS_SUITE.format(probes=samples / "crows_pairs_sample.csv"))
    return suite


def test_eval_says_as_each_task_starts_and_ends_in_a_log(micro_model, tmp_path, capsys):
    from evalkit.evaluate import run_suite

    run_suite(_progress_suite(tmp_path), micro_model, tmp_path / "s.duckdb", progress=True)
    lines = capsys.readouterr().err.splitlines()
    expected = [
        ("perplexity:texts", "perplexity on texts, 2 examples"),
        ("generation:conv", "generation on conv, 3 examples"),
        ("bias", "bias"),
    ]
    for number, (name, what) in enumerate(expected, start=1):
        assert f"task {number}/3 {name}: {what}" in lines
        assert any(re.fullmatch(rf"task {number}/3 {name}: done in [\d.]+ s", x) for x in lines)
    assert not any(x.startswith(("perplexity", "generate")) for x in lines)  # no bar in a log


def test_eval_shows_a_bar_for_every_task_on_a_terminal(micro_model, tmp_path, monkeypatch):
    import io
    import sys

    from evalkit.evaluate import run_suite

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_suite(_progress_suite(tmp_path), micro_model, tmp_path / "s.duckdb", progress=True)
    shown = terminal.getvalue().replace("\r", "\n")
    tasks = re.split(r"task \d/3 \S+: done in [\d.]+ s", shown)[:3]
    for output, bar in zip(tasks, ["perplexity", "generate", "perplexity"]):
        assert re.search(rf"{bar}: 100%\|", output), output
