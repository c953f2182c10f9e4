import json

import pytest

from evalkit.errors import EvalkitError
from evalkit.workspace import ENV_VAR, SUBDIRS, atomic_dir, open_workspace, write_jsonl


def test_explicit_path_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    ws = open_workspace(tmp_path / "explicit")
    assert ws.root == (tmp_path / "explicit").resolve()


def test_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    assert open_workspace().root == (tmp_path / "from-env").resolve()
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.chdir(tmp_path)
    assert open_workspace().root == (tmp_path / ".evalkit").resolve()


def test_layout_is_created(tmp_path):
    ws = open_workspace(tmp_path / "ws")
    assert all((ws.root / sub).is_dir() for sub in SUBDIRS)
    assert ws.store_path == ws.root / "evalkit.duckdb"


def test_write_jsonl_writes_whole_files_only(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl([{"a": 1}, {"b": "é"}], path) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"b": "é"}]

    def rows():
        yield {"c": 3}
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError):
        write_jsonl(rows(), path)
    assert path.read_text().count("\n") == 2  # the previous file is untouched
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no rows.jsonl.partial


def test_atomic_dir_replaces_or_keeps_the_previous_directory(tmp_path):
    final = tmp_path / "ckpt"
    atomic_dir(final, lambda tmp: (tmp / "a.txt").write_text("one"))
    atomic_dir(final, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert [p.name for p in final.iterdir()] == ["b.txt"]

    def full(tmp):
        (tmp / "c.txt").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(EvalkitError, match=r"cannot write .*ckpt: No space left .* MiB free"):
        atomic_dir(final, full)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert [p.name for p in final.iterdir()] == ["b.txt"]


def test_output_paths_in_the_way_are_named(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a file")
    with pytest.raises(
        EvalkitError, match=r"cannot write .*notes.txt/x.jsonl: .*notes.txt is a file"
    ):
        write_jsonl([{"a": 1}], notes / "x.jsonl")
    folder = tmp_path / "ws"
    folder.mkdir()
    with pytest.raises(EvalkitError, match=r"cannot write .*ws: .*ws is a folder"):
        write_jsonl([{"a": 1}], folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "ws"]  # no ws.partial
    with pytest.raises(EvalkitError, match=r"cannot write .*notes.txt/deep/run: .*notes.txt is a"):
        atomic_dir(notes / "deep" / "run", lambda tmp: None)
