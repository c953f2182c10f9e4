import pytest

from dashboards.launch import APP, command
from evalkit.accounts import sign_in
from evalkit.cli import main
from evalkit.store import open_store
from evalkit.workspace import open_workspace

PASSWORD = "a long enough passphrase"


def test_create_admin_reads_the_password_file_and_the_admin_can_sign_in(tmp_path, capsys):
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD + "\n")
    ws = tmp_path / "ws"
    assert (
        main(
            ["app", "--workspace", str(ws), "--create-admin", "ada", "--password-file", str(secret)]
        )
        == 0
    )
    assert "admin ada created" in capsys.readouterr().out
    with open_store(open_workspace(ws).store_path) as con:
        assert sign_in(con, "ada", PASSWORD).role == "admin"


def test_create_admin_prompts_twice(tmp_path, monkeypatch):
    answers = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["--workspace", str(tmp_path), "app", "--create-admin", "ada"]) == 0
    with open_store(open_workspace(tmp_path).store_path) as con:
        assert sign_in(con, "ada", PASSWORD).name == "ada"


@pytest.mark.parametrize(
    ("file_text", "message"),
    [
        (None, "cannot read a first line"),
        ("", "cannot read a first line"),
        ("short\n", "at least 10"),
    ],
)
def test_a_bad_password_file_is_a_clear_error(tmp_path, capsys, file_text, message):
    secret = tmp_path / "secret"
    if file_text is not None:
        secret.write_text(file_text)
    code = main(
        [
            "app",
            "--workspace",
            str(tmp_path),
            "--create-admin",
            "ada",
            "--password-file",
            str(secret),
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_differing_prompts_create_nothing(tmp_path, monkeypatch, capsys):
    answers = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["app", "--workspace", str(tmp_path), "--create-admin", "ada"]) == 2
    assert "the two passwords differ" in capsys.readouterr().err


def test_the_server_command_runs_the_app_headless_on_the_given_port():
    cmd = command(host="127.0.0.1", port=8601)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP) and APP.is_file()
    options = dict(zip(cmd[5::2], cmd[6::2]))
    assert options["--server.port"] == "8601" and options["--server.address"] == "127.0.0.1"
    assert options["--server.headless"] == "true"


def test_the_session_hours_reach_the_app(tmp_path, monkeypatch):
    started = {}
    monkeypatch.setattr("os.execve", lambda path, args, env: started.update(env))
    main(["app", "--workspace", str(tmp_path), "--session-hours", "3"])
    assert started["EVALKIT_SESSION_HOURS"] == "3"
