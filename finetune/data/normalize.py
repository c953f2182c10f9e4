"""Text normalization: the same text always looks the same to dedup, filters and the tokenizer.

Unicode NFC, mojibake repaired with ``ftfy``, control characters removed (newline and tab kept),
runs of spaces collapsed, at most one blank line in a row, HTML tags stripped when asked.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

# C0/C1 control characters except tab and newline; also zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("br", "p", "div", "li", "tr"):
            self.parts.append("\n")


def strip_html(text: str) -> str:
    """The text content of an HTML fragment, block tags turned into line breaks."""
    if not _HTML_TAG.search(text):
        return html.unescape(text)
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def normalize_text(text: str, *, fix_mojibake: bool = True, html_strip: bool = False) -> str:
    """Normalize one turn's text; idempotent: ``normalize_text(normalize_text(t)) == ...(t)``."""
    if html_strip:
        text = strip_html(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # control characters go before ftfy too: removing one can join bytes that ftfy then repairs
    text = _CONTROL.sub("", text)
    # ftfy only matters for non-ASCII text or HTML entities; skipping it keeps clean text fast.
    if fix_mojibake and not (text.isascii() and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text, normalization="NFC")
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
