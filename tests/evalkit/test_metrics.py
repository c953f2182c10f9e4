import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalkit.compare import TaskScores, compare_tables
from evalkit.errors import EvalkitError
from evalkit.metrics import (
    REFERENCE_METRICS,
    corpus_from_stats,
    corpus_score,
    degeneration,
    derangement,
    exact_match,
    is_repetitive,
    reference_metrics,
    sacrebleu_metric,
    sentence_stats,
    stats_columns,
)
from evalkit.stats.significance import bootstrap_sums

REFS = [
    "The package manager installs software from the archive.",
    "Use pip to install a package into the active environment.",
    "A virtual environment keeps dependencies apart.",
    "Restart the service after changing its configuration file.",
    "The kernel loads modules when the hardware needs them.",
    "Python lists are mutable, tuples are not.",
] * 5
HYPS = [
    "The package manager installs programs from the archive.",
    "Use pip to install packages in the environment.",
    "A virtual environment keeps the dependencies separate.",
    "Restart the service after you change the configuration.",
    "Modules are loaded by the kernel when hardware needs them.",
    "Lists are mutable in Python, tuples are not.",
] * 5
OTHER = [h.replace("the", "a") for h in HYPS]


def _sacrebleu_cli(tmp_path: Path, metric: str) -> float:
    (tmp_path / "refs.txt").write_text("\n".join(REFS) + "\n")
    (tmp_path / "hyps.txt").write_text("\n".join(HYPS) + "\n")
    exe = Path(sys.executable).with_name("sacrebleu")
    command = [str(exe), str(tmp_path / "refs.txt"), "-i", str(tmp_path / "hyps.txt")]
    out = subprocess.run(
        [*command, "-m", metric, "-b", "-w", "6"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


@pytest.mark.parametrize("metric", REFERENCE_METRICS)
def test_sacrebleu_private_methods_we_call_are_there(metric):
    """evalkit.metrics calls two private sacrebleu methods; an upgrade that changes them shows
    here first (pyproject.toml pins the range they were checked in)."""
    import inspect

    import sacrebleu

    expected = {
        "_extract_corpus_statistics": ["hypotheses", "references"],
        "_compute_score_from_stats": ["stats"],
    }
    scorer = sacrebleu_metric(metric)
    for name, params in expected.items():
        method = getattr(scorer, name, None)
        assert method is not None and list(inspect.signature(method).parameters) == params, (
            f"sacrebleu {sacrebleu.__version__} {type(scorer).__name__}.{name} is missing or "
            f"changed (expected parameters {params}): evalkit.metrics relies on it"
        )


@pytest.mark.parametrize("metric", REFERENCE_METRICS)
def test_corpus_scores_equal_the_sacrebleu_command_line(tmp_path, metric):
    assert corpus_score(metric, HYPS, REFS) == pytest.approx(
        _sacrebleu_cli(tmp_path, metric), abs=1e-6
    )


def test_paired_bootstrap_equals_sacrebleu_paired_bs():
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    _, results = PairedTest(
        [("baseline", HYPS), ("candidate", OTHER)],
        {"BLEU": BLEU()},
        [REFS],
        test_type="bs",
        n_samples=1000,
    )()
    expected = results["BLEU"][1]
    stats_b, stats_c = sentence_stats("bleu", HYPS, REFS), sentence_stats("bleu", OTHER, REFS)
    width = stats_b.shape[1]
    columns = list(stats_columns("bleu", width))
    # sacrebleu seeds its draws with 12345: the same resamples give the same numbers
    sums = bootstrap_sums(stats_c, n_resamples=1000, seed=12345)
    assert corpus_from_stats("bleu", sums[:, :-1]).mean() == pytest.approx(expected.mean)
    metric = reference_metrics("bleu", width)[0]
    ids = [str(i) for i in range(len(REFS))]
    entry = ("t", [metric], TaskScores(ids, columns, stats_b), TaskScores(ids, columns, stats_c))
    (comparison,) = compare_tables([entry], n_resamples=1000, seed=12345)
    assert comparison.candidate == pytest.approx(expected.score)
    assert comparison.p_value == pytest.approx(expected.p_value)


def test_identical_systems_are_not_different():
    stats = sentence_stats("chrf", HYPS, REFS)
    width = stats.shape[1]
    ids = [str(i) for i in range(len(REFS))]
    scores = TaskScores(ids, list(stats_columns("chrf", width)), stats)
    entry = ("t", reference_metrics("chrf", width)[:1], scores, scores)
    (comparison,) = compare_tables([entry], n_resamples=1000, seed=0)
    assert comparison.difference == 0 and comparison.p_value == 1.0
    assert not comparison.significant


def test_lengths_must_match():
    with pytest.raises(EvalkitError, match="3 hypotheses but 2 references"):
        sentence_stats("bleu", ["a", "b", "c"], ["a", "b"])


def test_derangement_moves_every_example_and_is_seeded():
    for n in (2, 3, 10, 101):
        perm = derangement(n, seed=4)
        assert sorted(perm) == list(range(n))
        assert not np.any(perm == np.arange(n))
    assert np.array_equal(derangement(50, 1), derangement(50, 1))
    assert not np.array_equal(derangement(50, 1), derangement(50, 2))
    with pytest.raises(EvalkitError):
        derangement(1, 0)


def test_control_scores_lower_when_answers_match_their_questions():
    wrong = [REFS[i] for i in derangement(len(REFS), 0)]
    assert corpus_score("bleu", HYPS, REFS) > corpus_score("bleu", HYPS, wrong) + 20


def test_degeneration_flags():
    assert degeneration("", "stop") == {
        "empty": 1.0,
        "repetitive": 0.0,
        "cut": 0.0,
        "distinct_2": 1.0,
    }
    assert degeneration("a fine answer", "length")["cut"] == 1.0
    assert is_repetitive("yes\nyes\nyes")
    assert is_repetitive("ok\n\n\n\nthen")
    assert is_repetitive("I am I am I am I am I am")
    assert not is_repetitive("Restart the service after changing its configuration file.")


def test_exact_match_ignores_case_and_spacing():
    assert exact_match(" Hello  World ", "hello world") == 1.0
    assert exact_match("hello", "hello world") == 0.0


def test_the_score_command_prints_what_sacrebleu_prints(tmp_path, capsys):
    import json

    from evalkit.cli import main

    expected = {m: _sacrebleu_cli(tmp_path, m) for m in REFERENCE_METRICS}
    assert main(["score", str(tmp_path / "refs.txt"), "-i", str(tmp_path / "hyps.txt")]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {p["metric"]: p["score"] for p in printed} == pytest.approx(expected, abs=1e-6)
    assert all(p["signature"].startswith("nrefs:1|") for p in printed)
    (tmp_path / "short.txt").write_text("one line\n")
    assert main(["score", str(tmp_path / "refs.txt"), "-i", str(tmp_path / "short.txt")]) == 2
    assert "short.txt against" in (err := capsys.readouterr().err)
    assert "1 hypotheses but 30 references" in err
