import pytest


def test_present_binary_is_found(require_binary):
    assert require_binary("sh").endswith("sh")


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_binary_skips_locally_and_fails_in_ci(require_binary, monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome):
        require_binary("no-such-program-evalkit")
