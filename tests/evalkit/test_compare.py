"""compare_tables and the gate's verdicts on hand-made score tables: statistics edge cases."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from evalkit.compare import TaskScores, compare_tables, load_scores
from evalkit.errors import EvalkitError
from evalkit.gate import FAIL, Rule, judge_metric
from evalkit.metrics import mean_metric, perplexity_metrics
from evalkit.store import open_store


def _scores(columns: dict[str, np.ndarray]) -> TaskScores:
    n = len(next(iter(columns.values())))
    return TaskScores(
        [f"e{i:03d}" for i in range(n)], list(columns), np.column_stack(list(columns.values()))
    )


def _perplexity(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 400, n).astype(float)  # very unequal lengths: the ratio matters
    nll_b = tokens * rng.uniform(2.0, 4.0, n)
    nll_c = nll_b * rng.uniform(1.0, 1.12, n)

    def table(nll):
        return _scores({"nll": nll, "tokens": tokens, "words": tokens, "bytes": 4 * tokens})

    entry = ("ppl", perplexity_metrics(), table(nll_b), table(nll_c))
    return entry, (nll_b, nll_c, tokens)


def test_relative_interval_resamples_the_ratio():
    entry, (nll_b, nll_c, tokens) = _perplexity()
    m = next(
        m for m in compare_tables([entry], n_resamples=4000, seed=0) if m.metric == "perplexity"
    )

    def ratio(b, c, t, axis=-1):
        return np.exp(c.sum(axis) / t.sum(axis)) / np.exp(b.sum(axis) / t.sum(axis)) - 1

    reference = scipy_stats.bootstrap(
        (nll_b, nll_c, tokens),
        ratio,
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        random_state=1,
    ).confidence_interval
    width = reference.high - reference.low
    assert m.relative_low == pytest.approx(reference.low, abs=0.05 * width)
    assert m.relative_high == pytest.approx(reference.high, abs=0.05 * width)
    # The absolute interval over the observed baseline is another, wider interval.
    assert m.high / m.baseline - m.low / m.baseline > 1.05 * width
    result = judge_metric(
        Rule("perplexity", limit="max_relative_increase", threshold=0.02), m, 0.05
    )
    assert (result.low, result.high) == (m.relative_low, m.relative_high)


def test_one_example_is_never_significant():
    b, c = _scores({"score": np.array([0.2])}), _scores({"score": np.array([0.9])})
    (m,) = compare_tables(
        [("t", [mean_metric("score", higher_is_better=True)], b, c)], n_resamples=1000, seed=0
    )
    assert m.p_value == 1.0 and m.min_detectable == np.inf
    result = judge_metric(Rule("score", limit="max_drop", threshold=0.1), m, 0.05)
    assert result.verdict != FAIL and "too small" in result.warnings[0]


def test_a_missing_score_is_refused():
    scores = np.array([0.5, np.nan, 0.7])
    b, c = _scores({"score": scores}), _scores({"score": np.array([0.5, 0.6, 0.7])})
    with pytest.raises(
        EvalkitError, match=r"baseline run's t/score is missing .* 1 examples \(e\.g\. e001\)"
    ):
        compare_tables(
            [("t", [mean_metric("score", higher_is_better=True)], b, c)], n_resamples=1000, seed=0
        )


def test_a_relative_rule_on_a_zero_baseline_is_an_error():
    b, c = _scores({"rate": np.zeros(20)}), _scores({"rate": np.linspace(0, 1, 20)})
    (m,) = compare_tables(
        [("t", [mean_metric("rate", higher_is_better=False)], b, c)], n_resamples=1000, seed=0
    )
    with pytest.raises(EvalkitError, match="baseline's rate is 0"):
        judge_metric(Rule("rate", limit="max_relative_increase", threshold=0.5), m, 0.05)


def test_scores_are_placed_by_example_id(tmp_path):
    from evalkit.results import ExampleResult, add_results, create_run

    with open_store(tmp_path / "s.duckdb") as con:
        run = create_run(
            con,
            name="r",
            suite_name="s",
            suite_hash="h",
            suite={"tasks": []},
            chat_template_fingerprint="t",
        )
        add_results(
            con,
            run,
            [
                ExampleResult("t", x, {"score": v}, {})
                for x, v in (("a", 1.0), ("b", 2.0), ("c", 3.0))
            ],
        )
        con.execute("DELETE FROM eval_scores WHERE run_id = ? AND example_id = 'b'", [run])
        table = load_scores(con, run)["t"]
    assert table.example_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(table.column("score"), [1.0, np.nan, 3.0])


def _ter_entry():
    """Two systems' TER statistics on 25 made-up segments, where sacrebleu's paired bootstrap
    p-value (0.046) is below 0.05 while the percentile interval still reaches over zero."""
    from evalkit.metrics import reference_metrics, sentence_stats

    words = [
        "the",
        "a",
        "cable",
        "router",
        "reset",
        "power",
        "light",
        "modem",
        "port",
        "network",
        "check",
    ]
    rng = np.random.default_rng(18)

    def sentences(n):
        return [" ".join(rng.choice(words, 6)) for _ in range(n)]

    refs = sentences(25)
    base = [r if rng.random() < 0.4 else s for r, s in zip(refs, sentences(25))]
    cand = [r if rng.random() < 0.55 else s for r, s in zip(refs, sentences(25))]
    stats_b, stats_c = sentence_stats("ter", base, refs), sentence_stats("ter", cand, refs)
    metric = reference_metrics("ter", stats_b.shape[1])[0]
    ids = [f"e{i:03d}" for i in range(25)]
    b, c = (TaskScores(ids, list(metric.columns), s) for s in (stats_b, stats_c))
    return "gen", [metric], b, c


def test_a_p_value_below_alpha_is_significant_and_says_which_way():
    from evalkit.compare import Comparison

    (m,) = compare_tables([_ter_entry()], n_resamples=1000, seed=0)
    assert m.p_value < 0.05 and m.low < 0 < m.high  # the case a user saw
    assert m.significant and m.difference < 0 and m.candidate_better is True
    table = Comparison({}, {}, [m], {}, 1000, 0, 0.05, ({}, {})).table()
    header, row = table.splitlines()
    assert header.split()[2] == "better" and row.split()[2] == "lower"
    assert row.endswith("significant: candidate better")
    (m,) = compare_tables([_ter_entry()], n_resamples=1000, seed=0, alpha=0.01)
    assert not m.significant and m.note() == ""
