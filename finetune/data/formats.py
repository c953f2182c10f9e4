"""Reading raw chats in the formats people have them in, into the conversation contract.

Formats: ``messages`` (OpenAI/TRL JSONL), ``sharegpt`` (``conversations`` with ``from``/``value``),
``alpaca`` (``instruction``/``input``/``output``), ``csv`` (prompt and response columns). JSON
arrays (``.json``) are read like JSONL. ``auto`` detects the format record by record.

Every line read becomes a :class:`Record`: a conversation, or an error saying why it is none
(malformed JSON, bad encoding, missing field, a line too long). Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.errors import EvalkitError

FORMATS = ("auto", "messages", "sharegpt", "alpaca", "csv")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class Record:
    """One record read from an input: a conversation, or the reason it could not be one."""

    file: str
    line: int
    source: str
    conversation: dict | None = None
    error: str | None = None  # short reason, e.g. "malformed JSON"
    detail: str = ""  # what exactly, e.g. the parser's message
    raw: str = field(default="", repr=False)  # the text as read, kept for dropped.jsonl


@dataclass(frozen=True)
class InputSpec:
    """An input file and the source name its records carry (``NAME=PATH`` or the file stem)."""

    path: Path
    source: str

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        name, sep, path = text.partition("=")
        if sep and name and "/" not in name:
            return cls(Path(path), name)
        return cls(Path(text), Path(text).stem)


def from_sharegpt(record: dict) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise ValueError("'conversations' is not a list")
    return [
        {
            "role": SHAREGPT_ROLES.get(str(t.get("from", "")).lower(), t.get("from")),
            "content": t.get("value"),
        }
        for t in turns
    ]


def from_alpaca(record: dict) -> list[dict]:
    prompt = str(record["instruction"])
    if record.get("input"):
        prompt += "\n\n" + str(record["input"])
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": record["output"]},
    ]
    if record.get("system"):
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


# Per format: the field that identifies it, and the conversion to messages.
_CONVERTERS = {
    "messages": ("messages", lambda r: r["messages"]),
    "sharegpt": ("conversations", from_sharegpt),
    "alpaca": ("instruction", from_alpaca),
}
_CONSUMED = {
    "messages": {"messages"},
    "sharegpt": {"conversations"},
    "alpaca": {"instruction", "input", "output", "system"},
}


def detect(record: dict) -> str | None:
    """The format of one parsed JSON record, or None."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def to_conversation(record: dict, fmt: str, source: str, fallback_id: str) -> dict:
    """A parsed record as a conversation; other fields are kept as metadata.

    Raises KeyError/ValueError/TypeError naming what is wrong.
    """
    if fmt == "auto":
        fmt = detect(record) or ""
        if not fmt:
            raise ValueError(
                f"unknown format (fields: {', '.join(sorted(record)) or 'none'}); expected "
                "'messages', 'conversations' or 'instruction'+'output'"
            )
    key, convert = _CONVERTERS[fmt]
    if key not in record or (fmt == "alpaca" and "output" not in record):
        missing = key if key not in record else "output"
        raise KeyError(f"missing field '{missing}' for format {fmt}")
    messages = convert(record)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TypeError("messages must be a list of objects with 'role' and 'content'")
    meta = {k: v for k, v in record.items() if k not in _CONSUMED[fmt]}
    meta.setdefault("id", fallback_id)
    meta.setdefault("source", source)
    return {"messages": messages, **meta}


def _read_event_log(spec: InputSpec) -> Iterator[Record]:
    """The served exchanges, corrections in place of responses, event ids and feedback kept."""
    from evalkit.events import conversations

    for number, conversation in enumerate(conversations(spec.path), start=1):
        conversation = {"id": conversation["event_id"], "source": spec.source, **conversation}
        yield Record(str(spec.path), number, spec.source, conversation=conversation)


def read_input(
    spec: InputSpec,
    fmt: str = "auto",
    *,
    max_line_bytes: int = 1_000_000,
    prompt_column: str = "prompt",
    response_column: str = "response",
) -> Iterator[Record]:
    """Yield one :class:`Record` per line (JSONL), element (JSON array) or row (CSV), or per
    exchange of an event log folder (``date=*/*.parquet``, as the monitor writes it)."""
    if fmt not in FORMATS:
        raise EvalkitError(f"unknown format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    if spec.path.is_dir():
        yield from _read_event_log(spec)
        return
    try:
        data = spec.path.read_bytes()
    except OSError as exc:
        raise EvalkitError(
            f"cannot read input {spec.path}: {exc.strerror or exc}", hint="check the path"
        ) from exc
    name = str(spec.path)
    if fmt == "csv" or (fmt == "auto" and spec.path.suffix.lower() == ".csv"):
        yield from _read_csv(spec, data, prompt_column, response_column)
        return
    if spec.path.suffix.lower() == ".json" and data.lstrip()[:1] == b"[":
        yield from _read_json_array(spec, data, fmt)
        return
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        rec = Record(name, number, spec.source)
        if len(raw) > max_line_bytes:
            rec.error, rec.detail = "line too long", f"{len(raw):,} bytes > {max_line_bytes:,}"
            rec.raw = raw[:200].decode("utf-8", "replace") + "…"
            yield rec
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rec.error, rec.detail = "invalid UTF-8", f"byte {exc.start}: {exc.reason}"
            rec.raw = raw.decode("utf-8", "replace")
            yield rec
            continue
        rec.raw = text
        yield _parse(rec, text, fmt)


def _parse(rec: Record, text: str, fmt: str) -> Record:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        rec.error, rec.detail = "malformed JSON", f"{exc.msg} at column {exc.colno}"
        return rec
    return _convert(rec, obj, fmt)


def _convert(rec: Record, obj: object, fmt: str) -> Record:
    if not isinstance(obj, dict):
        rec.error, rec.detail = "not a JSON object", type(obj).__name__
        return rec
    try:
        rec.conversation = to_conversation(obj, fmt, rec.source, f"{rec.source}-{rec.line}")
    except KeyError as exc:
        rec.error, rec.detail = "missing field", str(exc.args[0])
    except (ValueError, TypeError) as exc:
        rec.error, rec.detail = "wrong format", str(exc)
    return rec


def _read_json_array(spec: InputSpec, data: bytes, fmt: str) -> Iterator[Record]:
    try:
        items = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalkitError(
            f"{spec.path}: not a readable JSON array ({exc})",
            hint="fix the file, or convert it to JSONL so one bad record cannot hide the rest",
        ) from exc
    for number, item in enumerate(items, start=1):
        rec = Record(str(spec.path), number, spec.source, raw=json.dumps(item)[:2000])
        yield _convert(rec, item, fmt)


def _read_csv(spec: InputSpec, data: bytes, prompt: str, response: str) -> Iterator[Record]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EvalkitError(
            f"{spec.path}: not UTF-8 (byte {exc.start})", hint="re-encode the CSV file as UTF-8"
        ) from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    for col in (prompt, response):
        if col not in columns:
            raise EvalkitError(
                f"{spec.path}: no column {col!r} (columns: {', '.join(columns)})",
                hint="name the columns with --prompt-column and --response-column",
            )
    for row in reader:
        line = reader.line_num  # the physical line where the row ends
        rec = Record(str(spec.path), line, spec.source, raw=json.dumps(row)[:2000])
        if None in row or any(v is None for v in row.values()):
            rec.error, rec.detail = "wrong number of columns", f"expected {len(columns)}"
            yield rec
            continue
        meta = {k: v for k, v in row.items() if k not in (prompt, response) and v != ""}
        meta.setdefault("id", f"{spec.source}-{line}")
        meta.setdefault("source", spec.source)
        messages = [
            {"role": "user", "content": row[prompt]},
            {"role": "assistant", "content": row[response]},
        ]
        rec.conversation = {"messages": messages, **meta}
        yield rec
