import pytest
from hypothesis import given
from hypothesis import strategies as st

from finetune.data.normalize import normalize_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cafÃ© au lait", "café au lait"),  # mojibake: UTF-8 read as Latin-1
        ("cafe\u0301", "café"),  # NFD to NFC
        ("a\x00b\x1bc\u200bd", "abcd"),  # control and zero-width characters
        ("  too   many\t\tspaces  ", "too many spaces"),
        ("one\r\ntwo\n\n\n\nthree", "one\ntwo\n\nthree"),
        ("It&#39;s fine", "It's fine"),
    ],
)
def test_normalize(raw, clean):
    assert normalize_text(raw) == clean


def test_html_is_stripped_only_when_asked():
    raw = "<p>Hello &amp; <b>welcome</b></p><br>bye"
    assert normalize_text(raw, html_strip=True) == "Hello & welcome\nbye"
    assert "<b>" in normalize_text(raw)


@given(st.text())
def test_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
