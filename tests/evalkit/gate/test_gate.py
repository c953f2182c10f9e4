"""End to end: evaluate models into the store, compare the runs, gate the candidate."""

import json
import math
import shutil
from html.parser import HTMLParser
from xml.etree import ElementTree

import pytest

from evalkit.cli import main
from evalkit.results import get_run, list_runs
from evalkit.store import open_store

SUITE = """
name = "support-smoke"
[datasets.conv]
path = "conv.jsonl"
[datasets.texts]
path = "texts.jsonl"
{extra}
[[tasks]]
type = "perplexity"
dataset = "texts"
[[tasks]]
type = "perplexity"
dataset = "conv"
[[tasks]]
type = "generation"
dataset = "conv"
max_new_tokens = 10
repetition_penalty = 1.3
no_repeat_ngram_size = 3
[[tasks]]
type = "bias"
"""
RATING_SUITE = """
name = "support-rating"
[datasets.conv]
path = "conv.jsonl"
[[tasks]]
type = "generation"
dataset = "conv"
max_new_tokens = 10
repetition_penalty = 1.3
no_repeat_ngram_size = 3
[[tasks]]
type = "rating_sample"
dataset = "conv"
per_slice = 2
slice_field = "topic"
overlap = 2
"""
GATE = """
n_resamples = 1000
[[rules]]
metric = "perplexity"
task = "perplexity:conv"
max_relative_increase = 0.02
[[rules]]
metric = "chrf"
max_drop = 1.0
[[rules]]
metric = "repetitive"
max_increase = 0.1
[[rules]]
type = "bias"
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from evalkit.workspace import write_jsonl
    from finetune.data.corpora import load_chitchat, load_topics

    root = tmp_path_factory.mktemp("suite")
    convs = [c for c in load_topics() if c["messages"][-1]["role"] == "assistant"][::20][:40]
    write_jsonl([{"id": f"q{i}", **c} for i, c in enumerate(convs)], root / "conv.jsonl")
    texts = [
        {"id": f"t{i}", "text": "\n".join(m["content"] for m in c["messages"])}
        for i, c in enumerate(load_chitchat()[:30])
    ]
    write_jsonl(texts, root / "texts.jsonl")
    (root / "suite.toml").write_text(SUITE.format(extra=""))
    (root / "gate.toml").write_text(GATE)
    return root


@pytest.fixture(scope="module")
def damaged_model(micro_model, tmp_path_factory):
    """The micro model with noise on every weight: a planted regression."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("damaged") / "model"
    shutil.copytree(micro_model, path)
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ws")


def _cli(workspace, *args) -> int:
    return main(["--workspace", str(workspace), *map(str, args)])


def _eval(workspace, model, suite_file, name) -> int:
    return _cli(workspace, "eval", "--model", model, "--suite", suite_file, "--name", name)


@pytest.fixture(scope="module")
def runs(workspace, suite, micro_model, damaged_model):
    for model, name in ((micro_model, "base"), (micro_model, "base-again"), (damaged_model, "bad")):
        assert _eval(workspace, model, suite / "suite.toml", name) == 0
    return workspace


def _not_strict_json(constant: str):
    raise AssertionError(f"{constant} is not JSON")


def _report(out):
    return json.loads((out / "report.json").read_text(), parse_constant=_not_strict_json)


def test_same_model_twice_passes_and_regenerates_nothing(runs, suite, tmp_path):
    with open_store(runs / "evalkit.duckdb") as con:
        again = get_run(con, "base-again")
    assert again["summary"]["cached_generations"] == 40
    generation = again["summary"]["generation:conv"]
    assert set(generation["flagged"]) == {"empty", "repetitive", "cut"}
    assert generation["flagged"]["cut"] == round(generation["cut"] * generation["examples"])
    assert again["status"] == "complete" and again["suite_hash"]
    out = tmp_path / "report"
    assert _cli(runs, "gate", "--baseline", "base", "--candidate", "base-again",
                "--spec", suite / "gate.toml", "--out", out) == 0  # fmt: skip
    report = _report(out)
    assert report["verdict"] == "pass" and report["exit_code"] == 0
    assert all(r["verdict"] == "pass" for r in report["rules"])
    assert all(m["difference"] == 0 for m in report["metrics"])
    assert "<svg" in (out / "report.html").read_text()
    assert "Release gate: PASS" in (out / "report.md").read_text()


def test_a_damaged_candidate_fails_the_gate(runs, suite, tmp_path):
    out = tmp_path / "report"
    code = _cli(runs, "gate", "--baseline", "base", "--candidate", "bad",
                "--spec", suite / "gate.toml", "--out", out)  # fmt: skip
    assert code == 1
    report = _report(out)
    rule = next(r for r in report["rules"] if r["metric"] == "perplexity")
    assert rule["verdict"] == "fail"
    assert rule["low"] > 0.02 and rule["p_value"] < 0.05
    assert len(rule["worst"]) == 5
    assert rule["worst"][0]["candidate_value"] > rule["worst"][0]["baseline_value"]
    md = (out / "report.md").read_text()
    assert "Release gate: FAIL" in md and "Worst examples" in md
    # The plot: one point a rule, the failing one red and right of its threshold line.
    page = (out / "report.html").read_text()
    svg = ElementTree.fromstring(page[page.index("<svg") : page.index("</svg>") + 6])
    ns = "{http://www.w3.org/2000/svg}"
    points = svg.findall(f"{ns}circle")
    assert len(points) == len(report["rules"])
    row = [r["metric"] for r in report["rules"]].index("perplexity")
    assert points[row].get("fill") == "#c33"
    threshold = [line for line in svg.findall(f"{ns}line") if line.get("stroke-dasharray")][row]
    assert float(points[row].get("cx")) > float(threshold.get("x1"))
    for side in ("baseline", "candidate"):
        assert report[side]["model_hash"] and report[side]["code_version"]
        (by_metric,) = report[side]["signatures"].values()  # the one generation task
        assert set(by_metric) == {"bleu", "chrf", "ter"}
        assert f"{side}, generation:conv, bleu: `{by_metric['bleu']}`" in md
    assert by_metric["bleu"].startswith("nrefs:1|") and "version:" in by_metric["chrf"]


def test_compare_prints_intervals_and_breakdown(runs, capsys):
    capsys.readouterr()
    assert _cli(runs, "compare", "base", "bad", "--by", "topic", "--json") == 0
    data = json.loads(capsys.readouterr().out, parse_constant=_not_strict_json)
    ppl = next(m for m in data["metrics"] if m["task"] == "perplexity:texts")
    assert ppl["metric"] == "perplexity" and ppl["low"] <= ppl["difference"] <= ppl["high"]
    assert set(data["breakdown"]["topic"]) >= {"ai", "trivia", "coding"}
    assert _cli(runs, "compare", "base", "bad", "--by", "topci") == 2
    assert "metadata field 'topci'" in capsys.readouterr().err
    assert _cli(runs, "compare", "base", "bad") == 0
    out = capsys.readouterr().out
    assert "significant" in out
    cut = next(m for m in data["metrics"] if m["metric"] == "cut")
    counts = f"{round(cut['baseline'] * cut['n'])} -> {round(cut['candidate'] * cut['n'])} of "
    assert counts + str(cut["n"]) in out


def test_compare_warns_where_a_rule_is_below_what_the_sample_detects(runs, tmp_path, capsys):
    spec = tmp_path / "gate.toml"
    spec.write_text(
        "alpha = 0.01\n[[rules]]\nmetric = 'perplexity'\ntask = 'perplexity:texts'\n"
        "max_increase = 1e-9\n[[rules]]\nmetric = 'perplexity'\ntask = 'perplexity:conv'\n"
        "max_increase = 1e9\n"
        # Scored against the wrong references: no direction is better, any limit is allowed.
        "[[rules]]\nmetric = 'chrf_control'\nmax_increase = 1e9\n"
        "[[rules]]\nmetric = 'chrf'\nmax_increase = 1e9\n"  # the gate refuses this one
    )
    capsys.readouterr()
    assert _cli(runs, "compare", "base", "bad", "--spec", spec) == 0
    out, err = capsys.readouterr()
    assert "99% CI" in out and "detectable" in out
    small, refused = err.strip().splitlines()
    assert "perplexity:texts/perplexity" in small and "too small to detect" in small
    assert refused.startswith("warning: chrf may not rise") and "higher chrf is better" in refused
    # A flag given on the command line wins over the spec's value.
    assert _cli(runs, "compare", "base", "bad", "--spec", spec, "--alpha", "0.001") == 0
    assert "99.9% CI" in capsys.readouterr().out


def test_intervals_follow_alpha(runs, capsys):
    intervals = {}
    for alpha in ("0.05", "0.01"):
        capsys.readouterr()
        assert _cli(runs, "compare", "base", "bad", "--alpha", alpha, "--json") == 0
        data = json.loads(capsys.readouterr().out)
        ppl = next(m for m in data["metrics"] if m["task"] == "perplexity:texts")
        intervals[alpha] = ppl["low"], ppl["high"], ppl["min_detectable"]
    (low5, high5, mdd5), (low1, high1, mdd1) = intervals["0.05"], intervals["0.01"]
    assert low1 < low5 < high5 < high1 and mdd1 > mdd5


def test_bad_gate_specs_name_the_problem(runs, suite, tmp_path, capsys):
    cases = {
        "center": ("[[rules]]\nmetric = 'bleu'\nmax_drop = 1\ncenter = 0\n",
                   "rule 1: unknown key 'center'"),
        "alpha": ("alpha = 5\n[[rules]]\nmetric = 'bleu'\nmax_drop = 1\n",
                  "alpha 5.0 is not a significance level"),
        "direction": ("[[rules]]\nmetric = 'chrf'\nmax_increase = 1\n",
                      "higher chrf is better"),
        "nan": ("[[rules]]\nmetric = 'bleu'\nmax_drop = nan\n",
                "rule 1, max_drop: nan is not a finite number"),
        "text": ("[[rules]]\nmetric = 'bleu'\nmax_drop = 'one'\n",
                 "rule 1, max_drop: 'one' is not a finite number"),
        "seed": ("seed = 'abc'\n[[rules]]\nmetric = 'bleu'\nmax_drop = 1\n",
                 "seed 'abc' is not a whole number"),
        "alpha_text": ("alpha = 'x'\n[[rules]]\nmetric = 'bleu'\nmax_drop = 1\n",
                       "alpha: 'x' is not a finite number"),
        "rules": ("rules = 'bleu'\n", "rules must be [[rules]] tables"),
    }  # fmt: skip
    for name, (text, message) in cases.items():
        (tmp_path / f"{name}.toml").write_text(text)
        capsys.readouterr()
        assert _cli(runs, "gate", "--baseline", "base", "--candidate", "bad",
                    "--spec", tmp_path / f"{name}.toml", "--out", tmp_path / name) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert message in err, err
        assert f"{name}.toml" in err or name == "direction"


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("alhpa = 0.05\n[[rules]]\nmetric = 'bleu'\nmax_drop = 1\n", "unknown key 'alhpa'",
         "did you mean: alpha?"),
        ("[[rules]]\nmetric = 'bleu'\nmax_dorp = 1\n", "rule 1: unknown key 'max_dorp'",
         "did you mean: max_drop?"),
        ("[[rules]]\ntype = 'bais'\n", "rule 1: unknown rule type 'bais'", "did you mean: bias?"),
        ("[[rules]]\ntype = 'bias'\ncentre = 0\n", "rule 1: unknown key 'centre'",
         "did you mean: center?"),
    ],
)  # fmt: skip
def test_a_typo_in_a_spec_names_the_key_meant(tmp_path, text, message, hint):
    from evalkit.errors import EvalkitError
    from evalkit.gate import load_spec

    (tmp_path / "gate.toml").write_text(text)
    with pytest.raises(EvalkitError, match=message) as info:
        load_spec(tmp_path / "gate.toml")
    assert info.value.hint == hint


def test_runs_of_different_suites_are_refused(runs, suite, micro_model, capsys):
    (suite / "other.toml").write_text(SUITE.format(extra="").replace("support-smoke", "other"))
    assert _eval(runs, micro_model, suite / "other.toml", "other") == 0
    capsys.readouterr()
    code = _cli(runs, "gate", "--baseline", "base", "--candidate", "other",
                "--spec", suite / "gate.toml")  # fmt: skip
    assert code == 2
    assert "different suites" in capsys.readouterr().err


def test_a_run_that_died_is_never_complete(runs, suite, micro_model, monkeypatch, capsys):
    from dataclasses import replace

    from evalkit.tasks import TASK_TYPES

    def dies(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setitem(TASK_TYPES, "generation", replace(TASK_TYPES["generation"], run=dies))
    assert _eval(runs, micro_model, suite / "suite.toml", "died") == 2
    with open_store(runs / "evalkit.duckdb") as con:
        assert get_run(con, "died")["status"] == "failed"
        assert "died" in {r["name"] for r in list_runs(con)}
    capsys.readouterr()
    assert _cli(runs, "compare", "base", "died") == 2
    assert "not complete" in capsys.readouterr().err


def test_a_different_chat_template_fails(runs, suite, micro_model, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other-template"
    shutil.copytree(micro_model, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.chat_template = tokenizer.chat_template.replace("<|end|>", "<|end|> ")
    tokenizer.save_pretrained(other)
    assert _eval(runs, other, suite / "suite.toml", "templated") == 0
    out = tmp_path / "report"
    code = _cli(runs, "gate", "--baseline", "base", "--candidate", "templated",
                "--spec", suite / "gate.toml", "--out", out)  # fmt: skip
    assert code == 1
    check = next(c for c in _report(out)["checks"] if c["check"] == "same chat template")
    assert check["verdict"] == "fail"


def test_a_suite_queues_a_sample_for_rating(runs, suite, micro_model, capsys):
    """Two responses per topic go to the rating queue once the run is complete."""
    (suite / "rating.toml").write_text(RATING_SUITE)
    assert _eval(runs, micro_model, suite / "rating.toml", "rated") == 0
    assert "queued" in capsys.readouterr().out
    topics = [json.loads(line)["topic"] for line in (suite / "conv.jsonl").open()]
    with open_store(runs / "evalkit.duckdb") as con:
        run = get_run(con, "rated")
        items = con.execute(
            "SELECT slice, overlap, source, response_a, batch FROM rating_items "
            "WHERE batch = ? ORDER BY slice",
            [run["run_id"]],
        ).fetchall()
        outputs = dict(
            con.execute(
                "SELECT example_id, output FROM eval_examples WHERE run_id = ?", [run["run_id"]]
            ).fetchall()
        )
    per_topic = {t: min(2, topics.count(t)) for t in topics}
    assert [i[0] for i in items] == sorted(t for t, n in per_topic.items() for _ in range(n))
    for _, overlap, source, response, _ in items:
        source = json.loads(source)
        assert overlap == 2 and source["run"] == run["run_id"]
        assert source["task"] == "generation:conv" and response == outputs[source["example_id"]]


def test_bad_suites_name_the_problem(workspace, suite, micro_model, model_without_template, capsys):
    cases = {
        "missing": ("[datasets.x]\npath = 'nowhere.jsonl'\n[[tasks]]\ntype='perplexity'\n"
                    "dataset='x'\n", "nowhere.jsonl"),
        "empty": ("[datasets.x]\npath = 'empty.jsonl'\n[[tasks]]\ntype='perplexity'\n"
                  "dataset='x'\n", "is empty"),
        "unknown": ("[[tasks]]\ntype='perplexity'\ndataset='x'\n", "names dataset 'x'"),
        "type": ("[[tasks]]\ntype='bleu'\n", "unknown task type 'bleu'"),
        "rate": ("[datasets.x]\npath = 'conv.jsonl'\n[[tasks]]\ntype='rating_sample'\n"
                 "dataset='x'\n", "no generation task runs on it"),
        "rate-key": ("[datasets.x]\npath = 'conv.jsonl'\n[[tasks]]\ntype='generation'\n"
                     "dataset='x'\n[[tasks]]\ntype='rating_sample'\ndataset='x'\nper_topic=2\n",
                     "unknown rating_sample key 'per_topic'"),
    }  # fmt: skip
    (suite / "empty.jsonl").write_text("")
    for name, (text, message) in cases.items():
        (suite / f"{name}.toml").write_text(text)
        assert _eval(workspace, micro_model, suite / f"{name}.toml", name) == 2
        assert message in capsys.readouterr().err
    assert _eval(workspace, model_without_template, suite / "suite.toml", "plain") == 2
    assert "no chat template" in capsys.readouterr().err
    (suite / "bad-spec.toml").write_text("[[rules]]\nmetric = 'bleu'\n")
    assert _cli(workspace, "gate", "--baseline", "a", "--candidate", "b",
                "--spec", suite / "bad-spec.toml") == 2  # fmt: skip
    assert "give exactly one of" in capsys.readouterr().err


def test_conversation_perplexity_is_the_training_loss(micro_model, suite):
    """Assistant-masked NLL per token equals the model's own loss with the training labels."""
    import torch

    from evalkit.models import load_model
    from evalkit.suite import TaskSpec, load_examples, load_suite
    from evalkit.tasks import RunContext, run_perplexity
    from finetune.packing import encode

    model, tokenizer = load_model(micro_model)
    spec = load_suite(suite / "suite.toml").datasets["conv"]
    context = model.config.max_position_embeddings
    examples = [
        e
        for e in load_examples(spec)
        if len(tokenizer.apply_chat_template(e.messages, return_dict=False)) <= context
    ][:8]
    encoded = encode(tokenizer, [e.messages for e in examples], max_length=context)
    assert len(examples) == 8 and encoded.too_long == 0
    context = RunContext(model, tokenizer, batch_size=4, cache=None, seed=0)
    results = run_perplexity(context, TaskSpec("p", "perplexity", "conv"), examples)
    for result, ids, labels in zip(results, encoded.input_ids, encoded.labels):
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert result.scores["nll"] / result.scores["tokens"] == pytest.approx(
            loss.item(), rel=1e-5
        )
        assert result.scores["tokens"] == sum(label != -100 for label in labels[1:])


def test_lineage_and_contamination_of_a_trained_candidate(
    workspace, micro_model, topics_dataset, tmp_path
):
    from finetune.train import TrainConfig, train

    run = train(
        TrainConfig(
            base=str(micro_model), data=str(topics_dataset), out=str(tmp_path / "run"), max_steps=3
        )
    ).run
    lines = {
        split: (topics_dataset / f"{split}.jsonl").read_text().splitlines()[:15]
        for split in ("train", "test")
    }
    for split, rows in lines.items():
        (tmp_path / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "suite.toml").write_text(
        "name = 'lineage'\n"
        + "".join(
            f"[datasets.{s}]\npath = '{s}.jsonl'\n[[tasks]]\ntype = 'perplexity'\ndataset = '{s}'\n"
            for s in lines
        )
    )
    (tmp_path / "gate.toml").write_text(
        "[[rules]]\nmetric = 'bits_per_byte'\ntask = 'perplexity:test'\nmax_increase = 1.0\n"
    )
    assert _eval(workspace, micro_model, tmp_path / "suite.toml", "lineage-base") == 0
    assert _eval(workspace, run / "model", tmp_path / "suite.toml", "lineage-tuned") == 0
    out = tmp_path / "report"
    # Evaluated on its own training examples: the contamination rule (on by default) fails it.
    assert _cli(workspace, "gate", "--baseline", "lineage-base", "--candidate", "lineage-tuned",
                "--spec", tmp_path / "gate.toml", "--out", out) == 1  # fmt: skip
    report = _report(out)
    lineage = report["candidate"]["lineage"]
    manifest = json.loads((topics_dataset / "manifest.json").read_text())
    assert lineage["training_run"] == str(run.resolve())
    assert lineage["dataset_hash"] == manifest["dataset_hash"]
    assert lineage["files"] == manifest["files"] and not lineage["modified_files"]
    found = {row["task"]: row for row in report["contamination"]}
    assert found["perplexity:train"]["contaminated"] > 0
    assert found["perplexity:train"]["status"] == "contaminated"
    assert found["perplexity:test"]["contaminated"] < found["perplexity:train"]["contaminated"]
    rule = next(r for r in report["rules"] if r["metric"] == "contaminated")
    assert rule["verdict"] == "fail" and rule["task"] == "perplexity:train"
    share = found["perplexity:train"]["contaminated"] / found["perplexity:train"]["examples"]
    assert rule["observed"] == share and rule["threshold"] == 0.01
    assert report["verdict"] == "fail" and report["exit_code"] == 1
    assert any("perplexity:train" in w and "share a 13-gram" in w for w in report["warnings"])
    md = (out / "report.md").read_text()
    assert md.index("Warnings:") < md.index("## Rules")  # beside the verdict, not at the end
    # A spec may allow it: the same candidate then passes.
    loose = tmp_path / "loose.toml"
    loose.write_text(
        (tmp_path / "gate.toml").read_text() + "[[rules]]\ntype = 'contamination'\nmax_share = 1\n"
    )
    assert _cli(workspace, "gate", "--baseline", "lineage-base", "--candidate", "lineage-tuned",
                "--spec", loose, "--out", tmp_path / "loose") == 0  # fmt: skip
    reverse = _baseline_contamination(workspace, tmp_path)
    assert [row["status"] for row in reverse["contamination"]] == ["unchecked"]
    assert "contamination not checked" in reverse["warnings"][0]
    assert "contaminated" not in {r["metric"] for r in reverse["rules"]}
    # Training data edited after training: not the data the candidate saw, so it cannot be
    # checked, and the gate cannot say the candidate is clean: inconclusive, exit 3.
    train_file = topics_dataset / "train.jsonl"
    original = train_file.read_bytes()
    try:
        train_file.write_bytes(original + original.splitlines(keepends=True)[0])
        code = _cli(workspace, "gate", "--baseline", "lineage-base", "--candidate",
                    "lineage-tuned", "--spec", tmp_path / "gate.toml", "--out",
                    tmp_path / "edited")  # fmt: skip
    finally:
        train_file.write_bytes(original)
    edited = _report(tmp_path / "edited")
    (row,) = edited["contamination"]
    assert row["status"] == "unknown" and "is not the data the candidate" in row["note"]
    rule = next(r for r in edited["rules"] if r["metric"] == "contaminated")
    assert rule["verdict"] == "inconclusive" and edited["verdict"] == "inconclusive"
    assert code == edited["exit_code"] == 3


def _baseline_contamination(workspace, tmp_path):
    """Gating the other way round: the base model names no training data."""
    out = tmp_path / "reverse"
    _cli(workspace, "gate", "--baseline", "lineage-tuned", "--candidate", "lineage-base",
         "--spec", tmp_path / "gate.toml", "--out", out)  # fmt: skip
    return _report(out)


def test_the_shipped_examples_load():
    from pathlib import Path

    from evalkit.gate import load_spec
    from evalkit.suite import load_examples, load_suite

    root = Path(__file__).parents[3] / "fixtures"
    for path in sorted((root / "suites").glob("*.toml")):
        suite = load_suite(path)
        assert all(load_examples(d) for d in suite.datasets.values())
    for path in sorted((root / "gates").glob("*.toml")):
        assert load_spec(path).rules


def _bias_run(con, name: str, shares: dict[str, float]) -> str:
    from evalkit.results import ExampleResult, add_results, create_run, finish_run

    suite = {"tasks": [{"type": "bias"}]}
    run_id = create_run(
        con,
        name=name,
        suite_name="b",
        suite_hash="h",
        suite=suite,
        chat_template_fingerprint="t",
        model_hash=f"hash-of-{name}",
    )
    results = [
        ExampleResult(
            "bias",
            f"{category}-{i}",
            {"stereo_preferred_shared": float(i < share * 40)},
            {"category": category},
        )
        for category, share in shares.items()
        for i in range(40)
    ]
    add_results(con, run_id, results)
    finish_run(con, run_id, summary={})
    return run_id


def test_bias_rule_fails_only_where_the_candidate_is_more_biased(tmp_path):
    from evalkit.gate import load_spec, run_gate

    (tmp_path / "gate.toml").write_text("[[rules]]\ntype = 'bias'\n")
    spec = load_spec(tmp_path / "gate.toml")
    with open_store(tmp_path / "s.duckdb") as con:
        base = _bias_run(con, "base", {"gender": 0.5, "age": 0.55})
        worse = _bias_run(con, "worse", {"gender": 0.9, "age": 0.55})
        better = _bias_run(con, "better", {"gender": 0.5, "age": 0.5})
        report = run_gate(con, base, worse, spec)
        assert report.exit_code == 1
        verdicts = {g["group"]: g["verdict"] for g in report.rules[0].groups}
        assert verdicts == {"gender": "fail", "age": "pass"}
        # The worst examples: gender probes that flipped to the stereotype (20..35 of 40).
        worst = report.rules[0].worst
        assert len(worst) == 5 and all(w["metadata"]["category"] == "gender" for w in worst)
        assert all(w["baseline_value"] == 0 and w["candidate_value"] == 1 for w in worst)
        assert run_gate(con, base, better, spec).exit_code == 0
        same = run_gate(con, base, base, spec)
        assert same.exit_code == 0 and same.rules[0].worst == []


def test_a_bias_category_of_one_probe_is_not_judged(tmp_path):
    from evalkit.gate import load_spec, run_gate
    from evalkit.results import ExampleResult, add_results, create_run, finish_run

    (tmp_path / "gate.toml").write_text("[[rules]]\ntype = 'bias'\n")
    spec = load_spec(tmp_path / "gate.toml")
    with open_store(tmp_path / "s.duckdb") as con:
        runs = []
        for name, share in (("base", 0.5), ("cand", 1.0)):
            run = create_run(
                con,
                name=name,
                suite_name="b",
                suite_hash="h",
                suite={"tasks": [{"type": "bias"}]},
                chat_template_fingerprint="t",
            )
            probes = [("gender", i, float(i < 20)) for i in range(40)] + [("age", 0, share)]
            add_results(
                con,
                run,
                [
                    ExampleResult(
                        "bias", f"{c}-{i}", {"stereo_preferred_shared": v}, {"category": c}
                    )
                    for c, i, v in probes
                ],
            )
            finish_run(con, run, summary={})
            runs.append(run)
        report = run_gate(con, *runs, spec)
    verdicts = {g["group"]: g["verdict"] for g in report.rules[0].groups}
    assert verdicts == {"gender": "pass", "age": "inconclusive"}
    assert report.exit_code == 0 and "too few probes to judge: age" in report.rules[0].warnings


@pytest.mark.parametrize(
    ("policy", "verdict", "code", "warned"),
    [(None, "inconclusive", 3, False), ("fail", "inconclusive", 3, False),
     ("warn", "pass", 0, True), ("pass", "pass", 0, False)],
)  # fmt: skip
def test_an_inconclusive_rule_follows_the_specs_policy(
    tmp_path, capsys, policy, verdict, code, warned
):
    """2 of 40 probes flipped: worse than a limit of 0, but not significantly so."""
    from evalkit.gate import load_spec, run_gate

    (tmp_path / "gate.toml").write_text(
        (f"inconclusive = '{policy}'\n" if policy else "")
        + "[[rules]]\nmetric = 'stereo_preferred_shared'\nmax_increase = 0\n"
    )
    with open_store(tmp_path / "evalkit.duckdb") as con:
        _bias_run(con, "base", {"gender": 0.5})
        _bias_run(con, "cand", {"gender": 0.55})
        report = run_gate(con, "base", "cand", load_spec(tmp_path / "gate.toml"))
    assert [r.verdict for r in report.rules] == ["inconclusive"]
    assert (report.verdict, report.exit_code) == (verdict, code)
    assert any("inconclusive, passed" in w for w in report.warnings) == warned
    # No training data named: the contamination rule is not judged, and says so.
    assert "contamination not checked" in report.warnings[0]
    capsys.readouterr()
    assert _cli(tmp_path, "gate", "--baseline", "base", "--candidate", "cand",
                "--spec", tmp_path / "gate.toml", "--out", tmp_path / "report") == code  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"gate: {verdict};")
    assert out[-2].startswith("warning: ")  # the warnings come right before the verdict
    assert f"Release gate: {verdict.upper()}" in (tmp_path / "report" / "report.md").read_text()


def test_a_bad_inconclusive_policy_is_refused(tmp_path):
    from evalkit.errors import EvalkitError
    from evalkit.gate import load_spec

    (tmp_path / "gate.toml").write_text(
        "inconclusive = 'ignore'\n[[rules]]\nmetric = 'bleu'\nmax_drop = 1\n"
    )
    with pytest.raises(EvalkitError, match="inconclusive = 'ignore' is not a policy"):
        load_spec(tmp_path / "gate.toml")
    (tmp_path / "gate.toml").write_text("[[rules]]\ntype = 'contamination'\nmax_share = 5\n")
    with pytest.raises(EvalkitError, match=r"max_share 5\.0 is not a share"):
        load_spec(tmp_path / "gate.toml")


class _Cells(HTMLParser):
    """The text of every element of interest in a page, by tag."""

    def __init__(self):
        super().__init__()
        self.open: list[tuple[str, int]] = []  # (tag, its index in text[tag])
        self.text: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        self.text.setdefault(tag, []).append("")
        self.open.append((tag, len(self.text[tag]) - 1))

    def handle_endtag(self, tag):
        while self.open and self.open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for tag, i in self.open:
            self.text[tag][i] += data


def test_the_html_report_is_html(runs, suite, tmp_path):
    out = tmp_path / "report"
    _cli(runs, "gate", "--baseline", "base", "--candidate", "bad", "--spec", suite / "gate.toml",
         "--out", out)  # fmt: skip
    page = _Cells()
    page.feed((out / "report.html").read_text())
    cells = page.text["td"] + page.text["th"]
    assert {"table", "tr", "td", "th", "ul", "li", "h1", "h2", "strong", "code"} <= set(page.text)
    assert "fail" in page.text["strong"] and "verdict" in page.text["th"]
    mine = ("same ", "baseline: model", "candidate: model", "baseline, ", "candidate, ")
    ours = [t for t in page.text["li"] if t.startswith(mine)]
    assert len(ours) == 2 + 2 + 2 * 3  # checks, lineage, signatures (prompts are users' text)
    for text in cells + ours + page.text["p"]:
        assert "**" not in text and "`" not in text, text
    assert not any(text.startswith("- ") for text in page.text["li"])
    assert not any(text.startswith("|") for text in page.text["p"])
    run_id = _report(out)["baseline"]["run_id"]
    assert run_id in page.text["code"]


def test_an_undefined_interval_is_no_evidence():
    from evalkit.compare import MetricComparison
    from evalkit.gate import GateReport, Rule, judge_metric
    from evalkit.gate.report import _forest_svg

    # A clear rise, but the relative interval is undefined (NaN), as where resampled baselines
    # reach 0: a relative rule cannot call it significant, and the plot draws no interval.
    m = MetricComparison("t", "perplexity", 10.0, 12.0, 2.0, 1.0, 3.0, 1e-3, "permutation",
                         50, False, 0.5)  # fmt: skip
    rule = Rule("perplexity", limit="max_relative_increase", threshold=0.02)
    result = judge_metric(rule, m, 0.05)
    assert result.verdict == "inconclusive"
    assert m.significant and not MetricComparison(**{**m.__dict__, "low": math.nan}).significant
    svg = _forest_svg(GateReport("inconclusive", 1, [result], [], [], None, None))
    assert "nan" not in svg.lower() and svg.count("<circle") == 1


def test_compare_and_gate_give_the_same_intervals_by_default(runs, tmp_path, capsys):
    spec = tmp_path / "gate.toml"  # no alpha, resamples or seed: the defaults
    spec.write_text(
        '[[rules]]\nmetric = "perplexity"\ntask = "perplexity:conv"\nmax_increase = 1\n'
    )
    out = tmp_path / "report"
    _cli(runs, "gate", "--baseline", "base", "--candidate", "bad", "--spec", spec, "--out", out)
    capsys.readouterr()
    assert _cli(runs, "compare", "base", "bad", "--json") == 0
    compared = json.loads(capsys.readouterr().out, parse_constant=_not_strict_json)["metrics"]
    gated = _report(out)["metrics"]
    assert [(m["low"], m["high"], m["p_value"]) for m in compared] == [
        (m["low"], m["high"], m["p_value"]) for m in gated
    ]
