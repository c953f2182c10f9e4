"""`evalkit rate`, in-process: every result checked through the library."""

import json

import pytest

from evalkit.cli import main
from evalkit.rating.report import load_ratings, queue_status
from evalkit.results import ExampleResult, add_results, create_run, finish_run
from evalkit.store import open_store
from evalkit.workspace import open_workspace


def _run(con, name, prefix, suite_hash="h"):
    run_id = create_run(con, name=name, suite_name="s", suite_hash=suite_hash)
    add_results(
        con,
        run_id,
        [
            ExampleResult(
                "chat", f"ex{n}", {}, {"topic": "t"},
                prompt=json.dumps([{"role": "user", "content": f"q{n}"}]),
                output=f"{prefix} {n}",
            )
            for n in range(6)
        ],
    )  # fmt: skip
    finish_run(con, run_id, summary={})


@pytest.fixture
def workspace(tmp_path):
    ws = open_workspace(tmp_path / "ws")
    with open_store(ws.store_path) as con:
        _run(con, "base", "base answer")
        _run(con, "cand", "candidate answer")
    return ws


def _rate(ws, *args):
    return main(["--workspace", str(ws.root), "rate", *args])


def test_enqueue_claim_submit_rank_and_export(workspace, capsys, tmp_path):
    assert _rate(workspace, "enqueue", "compare", "base", "cand", "--overlap", "2") == 0
    assert "queued 6 new items" in capsys.readouterr().out
    assert _rate(workspace, "enqueue", "run", "base", "--kind", "correction") == 0
    assert _rate(workspace, "annotator", "ann", "bob") == 0
    capsys.readouterr()
    for name in ("ann", "bob"):
        while True:
            code = _rate(workspace, "claim", name, "--gold-every", "0")
            if code == 3:
                assert capsys.readouterr().err == f"nothing to rate for {name}\n"
                break
            assert code == 0
            got = json.loads(capsys.readouterr().out)
            if got["kind"] == "pair":
                rating = {"choice": "B" if "candidate" in got["response_b"] else "A"}
            else:
                rating = {"corrected": got["response_a"] + " (fixed)"}
            args = ["submit", name, got["item_id"], "--rating", json.dumps(rating)]
            assert _rate(workspace, *args, "--shown-ms", "1500") == 0
            assert "stored" in capsys.readouterr().out
    with open_store(workspace.store_path) as con:
        status = queue_status(con)
        records = load_ratings(con)
    assert status["items"]["pair"]["complete"] == 6 and status["ratings"] == 18
    assert {r["shown_ms"] for r in records} == {1500}

    assert _rate(workspace, "status") == 0
    out = capsys.readouterr().out
    assert "pair" in out and "ann" in out and "bob" in out
    assert _rate(workspace, "ranking", "--resamples", "200") == 0
    out = capsys.readouterr().out
    assert "Bradley-Terry over 12 judgements on 6 prompts" in out and "prior 0.1" in out
    assert "cand over base: win rate 1.000" in out  # every judge preferred the candidate
    assert [line.split()[0] for line in out.splitlines()[2:4]] == ["cand", "base"]  # names
    # Without a prior, a model that won every judgement has no maximum-likelihood strength.
    assert _rate(workspace, "ranking", "--resamples", "200", "--prior", "0") == 2
    assert "maximum-likelihood fit does not exist" in capsys.readouterr().err
    assert _rate(workspace, "agreement", "--resamples", "200") == 0
    assert "Krippendorff's alpha (nominal)" in capsys.readouterr().out
    for fmt, rows in (("dpo", 6 + 6), ("sft", 6), ("kto", 0)):
        out = tmp_path / f"{fmt}.jsonl"
        assert _rate(workspace, "export", fmt, "--out", str(out)) == 0
        assert len(out.read_text().splitlines()) == rows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["claim", "nobody"], "unknown annotator 'nobody'"),
        (["submit", "ann", "x", "--rating", "{bad"], "--rating: not JSON"),
        (["submit", "ann", "x", "--rating", '{"thumb": "up"}'], "did you mean: thumbs"),
        (["submit", "ann", "x", "--rating", '{"scores": [5]}'], "must be an object"),
        (["enqueue", "run", "missing"], "no evaluation run 'missing'"),
        (["enqueue", "events"], "no event files"),
        (["enqueue", "events", "--since", "yesterday"], "dates are YYYY-MM-DD"),
        (["export", "orpo", "--out", "x.jsonl"], "unknown export format"),
        (["ranking"], "no pairwise judgements"),
    ],
)
def test_bad_input_is_named_without_a_traceback(workspace, capsys, args, message):
    assert _rate(workspace, "annotator", "ann") == 0
    assert _rate(workspace, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_items_are_listed_with_their_ids(workspace, capsys):
    from evalkit.rating.report import list_items

    assert _rate(workspace, "enqueue", "run", "base", "--batch", "first") == 0
    assert _rate(workspace, "enqueue", "compare", "base", "cand") == 0
    capsys.readouterr()
    assert _rate(workspace, "items", "--batch", "first") == 0
    lines = capsys.readouterr().out.splitlines()
    with open_store(workspace.store_path) as con:
        singles = list_items(con, batch="first")
        assert len(list_items(con, kind="pair")) == 6
    assert len(singles) == 6 and {i["kind"] for i in singles} == {"single"}
    assert [line.split()[0] for line in lines[1:]] == [i["item_id"] for i in singles]
    assert lines[1].split()[1:5] == ["single", "0", "of", "1"]
    assert _rate(workspace, "items", "--kind", "pairs") == 2
    assert "did you mean: pair?" in capsys.readouterr().err


def test_pairs_from_different_suites_are_refused(workspace, capsys):
    with open_store(workspace.store_path) as con:
        _run(con, "other", "other answer", suite_hash="another suite or decoding")
    assert _rate(workspace, "enqueue", "compare", "base", "other") == 2
    err = capsys.readouterr().err
    assert "are of different suites, decoding settings or data" in err
    with open_store(workspace.store_path) as con:
        assert queue_status(con)["items"] == {}


def test_a_name_shared_by_runs_is_shown_with_their_ids(workspace, capsys):
    from evalkit.rating.report import model_labels

    with open_store(workspace.store_path) as con:
        _run(con, "cand", "candidate again")
        ids = dict(con.execute("SELECT run_id, name FROM eval_runs").fetchall())
        labels = model_labels(con, set(ids) | {"served-v2"})
    assert labels["served-v2"] == "served-v2"
    for run_id, name in ids.items():
        assert labels[run_id] == (name if name == "base" else f"cand ({run_id})")
