from evalkit.workspace import ENV_VAR, SUBDIRS, open_workspace


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
