"""Naming runs: a name means its latest complete run; runs can be removed and renamed."""

import json
import logging

import pytest

from evalkit.cli import main
from evalkit.errors import EvalkitError
from evalkit.results import complete_run, get_run, remove_run, rename_run, resolve
from evalkit.store import open_store
from evalkit.workspace import open_workspace


@pytest.fixture
def workspace(tmp_path):
    return open_workspace(tmp_path / "ws")


def test_a_name_means_its_latest_complete_run_and_says_so(make_run, workspace, caplog):
    with open_store(workspace.store_path) as con:
        first = make_run(con, "prod")
        second = make_run(con, "prod")
        make_run(con, "prod", status="failed")
        make_run(con, "prod", status="running")  # interrupted: killed outright
        with caplog.at_level(logging.WARNING):
            assert resolve(con, "prod") == second != first
        assert "'prod' names 4 runs; using the latest complete one, " + second in caplog.text
        assert get_run(con, "prod")["run_id"] == second
        assert get_run(con, second[:8])["run_id"] == second


def test_a_name_with_no_complete_run_is_still_refused_as_unfinished(make_run, workspace):

    with open_store(workspace.store_path) as con:
        make_run(con, "big", status="failed")
        latest = make_run(con, "big", status="running")
        with pytest.raises(EvalkitError, match=f"run {latest} is running, not complete"):
            complete_run(con, "big")


def test_compare_by_a_reused_name_takes_the_complete_run(make_run, workspace, capsys):
    with open_store(workspace.store_path) as con:
        make_run(con, "base")
        make_run(con, "base", status="failed")
        cand = make_run(con, "cand")
    code = main(["--workspace", str(workspace.root), "compare", "base", "cand", "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["candidate"]["run_id"] == cand


def test_runs_rm_deletes_the_run_and_its_rows(make_run, workspace, capsys):
    # names that are no prefix of a run id (hex): "b" was, one time in 16, of the kept run's
    with open_store(workspace.store_path) as con:
        keep, gone = make_run(con, "kept"), make_run(con, "gone")
    assert main(["--workspace", str(workspace.root), "runs", "rm", "gone"]) == 0
    assert f"removed run {gone}" in capsys.readouterr().out
    with open_store(workspace.store_path) as con:
        for table in ("eval_runs", "eval_examples", "eval_scores"):
            ids = {r for (r,) in con.execute(f"SELECT DISTINCT run_id FROM {table}").fetchall()}
            assert ids == {keep}
        with pytest.raises(EvalkitError, match="no evaluation run 'gone'"):
            remove_run(con, "gone")


def test_runs_rename_and_a_taken_name(make_run, workspace, capsys):
    with open_store(workspace.store_path) as con:
        old, new = make_run(con, "prod"), make_run(con, "cand")
    root = str(workspace.root)
    assert main(["--workspace", root, "runs", "rename", "cand", "prod"]) == 2
    assert f"the name 'prod' already means run {old}" in capsys.readouterr().err
    assert main(["--workspace", root, "runs", "rename", "prod", "prod-2026-11"]) == 0
    assert main(["--workspace", root, "runs", "rename", "cand", "prod"]) == 0
    with open_store(workspace.store_path) as con:
        assert resolve(con, "prod") == new and resolve(con, "prod-2026-11") == old
        assert rename_run(con, "prod", "prod") == new  # its own name again: no conflict
    assert main(["--workspace", root, "runs", "rename", "prod"]) == 2
    assert "expected RUN, rm RUN [RUN ...] or rename RUN NAME" in capsys.readouterr().err


def test_runs_lists_a_superseded_name(make_run, workspace, capsys):
    with open_store(workspace.store_path) as con:
        old, new = make_run(con, "prod"), make_run(con, "prod")
    assert main(["--workspace", str(workspace.root), "runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(x for x in lines if x.startswith(old)).endswith("prod (superseded)")
    assert next(x for x in lines if x.startswith(new)).endswith("prod")
