"""Bias probe sets: minimal pairs of sentences and of prompts, read from three file formats.

- the project's own set, templates x group terms in TOML (``fixtures/bias_probes/probes.toml``,
  described in the README beside it): sentence pairs and prompt pairs;
- CrowS-Pairs CSV (columns ``sent_more``, ``sent_less``, ``stereo_antistereo``, ``bias_type``);
- StereoSet JSON (``data.intrasentence`` and ``data.intersentence``).

CrowS-Pairs: ``sent_more`` is the more stereotypical sentence in both directions. The direction
says which sentence is about the historically disadvantaged group: ``stereo``, ``sent_more``
demonstrates a stereotype about it; ``antistereo``, ``sent_less`` violates one (so ``sent_more``,
about the contrasting group, is still the stereotypical reading). The CrowS-Pairs ``metric.py``
accordingly counts a bias point whenever ``sent_more`` scores higher, in either direction.

A malformed file is an :class:`EvalkitError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.errors import EvalkitError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PROBES = FIXTURES / "bias_probes" / "probes.toml"
PLACEHOLDER = "{group}"
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
STEREOSET_KINDS = ("intrasentence", "intersentence")


@dataclass(frozen=True)
class SentencePair:
    """Two sentences differing in a group (or attribute) term; ``stereo`` is the stereotypical one.

    ``meta`` holds what the source says beside the pair (template, direction, target), copied into
    each result's metadata.
    """

    id: str
    category: str
    stereo: str
    anti: str
    source: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptPair:
    """Two conversations that differ only in the group term; the first names group a."""

    id: str
    category: str
    groups: tuple[str, str]
    prompts: tuple[list[dict], list[dict]]
    source: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeSet:
    """What one probe file holds, with its provenance (declared version, content hash)."""

    name: str
    version: str | None
    sha256: str
    pairs: list[SentencePair]
    prompts: list[PromptPair] = field(default_factory=list)


def load_probes(path: str | Path = PROBES) -> ProbeSet:
    """Read a probe file, by its suffix: ``.toml`` (the project's), ``.csv`` (CrowS-Pairs) or
    ``.json`` (StereoSet).

    >>> probes = load_probes()  # the project's set
    >>> len(probes.pairs), len(probes.prompts)
    """
    path = Path(path)
    readers = {".toml": _load_project, ".csv": _load_crows_pairs, ".json": _load_stereoset}
    if path.suffix not in readers:
        raise EvalkitError(
            f"{path}: unknown probe file type {path.suffix!r}",
            hint="use .toml (evalkit's format), .csv (CrowS-Pairs) or .json (StereoSet)",
        )
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalkitError(f"cannot read probe file {path}: {exc}") from exc
    return readers[path.suffix](path, text, hashlib.sha256(data).hexdigest())


def fill(template: str, term: str) -> str:
    """The template with its group placeholder replaced, capitalized when the term opens it."""
    text = template.replace(PLACEHOLDER, term)
    return text[0].upper() + text[1:] if template.startswith(PLACEHOLDER) else text


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _line_of(lines: list[str], needle: str, start: int = 0) -> int:
    """1-based number of the first line from ``start`` holding ``needle``, else ``start + 1``."""
    for number in range(start, len(lines)):
        if needle in lines[number]:
            return number + 1
    return start + 1


class _Checker:
    """Raises errors that name the file, line and field."""

    def __init__(self, path: Path, hint: str) -> None:
        self.path, self.hint = path, hint

    def fail(self, line: int, where: str, message: str) -> None:
        raise EvalkitError(f"{self.path}:{line}: {where}: {message}", hint=self.hint)

    def keys(self, line: int, where: str, table: object, required: set, optional=frozenset()):
        """``table`` must be a table (dict) with the ``required`` fields and no unknown one."""
        if not isinstance(table, dict):
            self.fail(line, where, "must be a table of fields")
        known = required | optional
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                suggestion = f" (did you mean: {close[0]}?)" if close else ""
                self.fail(line, where, f"unknown field {key!r}{suggestion}")
        for key in sorted(required - set(table)):
            self.fail(line, where, f"missing field {key!r}")

    def text(self, line: int, where: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(line, where, "must be a non-empty string")
        return value

    def template(self, line: int, where: str, value: object) -> str:
        """A template must hold the placeholder once: its two sentences differ only there."""
        value = self.text(line, where, value)
        if value.count(PLACEHOLDER) != 1 or value.count("{") != 1:
            self.fail(
                line,
                where,
                f"{value!r} is not a minimal pair: it must hold {PLACEHOLDER} exactly once, "
                "so the two sentences differ only in the group term",
            )
        return value


# -- the project's format ----------------------------------------------------------------------


def _load_project(path: Path, text: str, sha256: str) -> ProbeSet:
    check = _Checker(path, "see fixtures/bias_probes/README.md for the format")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends with "(at line N, column M)"
        raise EvalkitError(f"{path}: not valid TOML: {exc}", hint=check.hint) from exc
    lines = text.splitlines()
    check.keys(1, "top level", doc, {"name", "version", "sets"}, {"generation"})
    name = check.text(_line_of(lines, "name"), "name", doc["name"])
    version = check.text(_line_of(lines, "version"), "version", str(doc["version"]))
    source = f"{name}@{version}"
    sets = doc["sets"]
    if not isinstance(sets, list) or not sets:
        check.fail(_line_of(lines, "sets"), "sets", "must be a non-empty list of [[sets]] tables")
    set_lines = [n for n, line in enumerate(lines) if line.strip() == "[[sets]]"]
    pairs, found, groups = [], [], []
    for k, entry in enumerate(sets):
        start = set_lines[k] if k < len(set_lines) else 0
        where = f"sets[{k}]"
        check.keys(start + 1, where, entry, {"category", "terms", "templates"})
        category = check.text(start + 1, f"{where}.category", entry["category"])
        terms = _terms(check, lines, start, where, entry["terms"])
        groups.append((category, terms))
        templates = entry["templates"]
        if not isinstance(templates, list) or not templates:
            check.fail(start + 1, f"{where}.templates", "must be a non-empty list")
        for j, template in enumerate(templates):
            here = f"{where}.templates[{j}]"
            line = _line_of(lines, _needle(template, "text"), start)
            check.keys(line, here, template, {"id", "about", "text"})
            template_id = check.text(line, f"{here}.id", template["id"])
            text_ = check.template(line, f"{here}.text", template["text"])
            about = template["about"]
            if about not in ("a", "b"):
                check.fail(line, f"{here}.about", f'{about!r}: use "a" or "b"')
            for a, b in terms:
                stereo, anti = (a, b) if about == "a" else (b, a)
                pairs.append(
                    SentencePair(
                        id=f"{category}/{template_id}/{slug(a)}",
                        category=category,
                        stereo=fill(text_, stereo),
                        anti=fill(text_, anti),
                        source=source,
                        meta={"template": template_id, "about": about, "groups": [a, b]},
                    )
                )
                found.append(line)
    _unique(check, [p.id for p in pairs], found, "sets")
    prompts = _prompts(check, lines, doc.get("generation"), groups, source)
    return ProbeSet(name, version, sha256, pairs, prompts)


def _needle(table: object, key: str) -> str:
    """The text that finds a table's line: its ``key`` field, else NUL (never found)."""
    value = table.get(key) if isinstance(table, dict) else None
    return value if isinstance(value, str) else "\0"


def _terms(
    check: _Checker, lines: list[str], start: int, where: str, terms: object
) -> list[tuple[str, str]]:
    line = _line_of(lines, "terms", start)
    if not isinstance(terms, list) or not terms:
        check.fail(line, f"{where}.terms", "must be a non-empty list of [group a, group b] pairs")
    out = []
    for i, pair in enumerate(terms):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(t, str) and t.strip() for t in pair)
            or pair[0] == pair[1]
        ):
            first = pair[0] if isinstance(pair, list) and pair else None
            check.fail(
                _line_of(lines, json.dumps(first) if isinstance(first, str) else "\0", line - 1),
                f"{where}.terms[{i}]",
                f"{pair!r}: expected two different group terms, [group a, group b]",
            )
        out.append((pair[0], pair[1]))
    return out


def _prompts(
    check: _Checker,
    lines: list[str],
    generation: object,
    groups: list[tuple[str, list[tuple[str, str]]]],
    source: str,
) -> list[PromptPair]:
    """Each generation prompt over every term pair of every set."""
    if generation is None:
        return []
    start = _line_of(lines, "[generation]") - 1
    check.keys(start + 1, "generation", generation, {"prompts"})
    if not isinstance(generation["prompts"], list):
        check.fail(start + 1, "generation.prompts", "must be a list")
    prompts, found = [], []
    for i, prompt in enumerate(generation["prompts"]):
        here = f"generation.prompts[{i}]"
        line = _line_of(lines, _needle(prompt, "text"), start)
        check.keys(line, here, prompt, {"id", "text"})
        prompt_id = check.text(line, f"{here}.id", prompt["id"])
        text = check.template(line, f"{here}.text", prompt["text"])
        for category, terms in groups:
            for a, b in terms:
                prompts.append(
                    PromptPair(
                        id=f"{category}/{prompt_id}/{slug(a)}",
                        category=category,
                        groups=(a, b),
                        prompts=(
                            [{"role": "user", "content": fill(text, a)}],
                            [{"role": "user", "content": fill(text, b)}],
                        ),
                        source=source,
                        meta={"prompt": prompt_id},
                    )
                )
                found.append(line)
    _unique(check, [p.id for p in prompts], found, "generation.prompts")
    return prompts


def _unique(check: _Checker, ids: list[str], lines: list[int], where: str) -> None:
    seen = set()
    for pair_id, line in zip(ids, lines):
        if pair_id in seen:
            check.fail(line, where, f"two pairs share the id {pair_id!r}: make the ids unique")
        seen.add(pair_id)


# -- CrowS-Pairs -------------------------------------------------------------------------------


def _load_crows_pairs(path: Path, text: str, sha256: str) -> ProbeSet:
    check = _Checker(
        path, f"a CrowS-Pairs file is a CSV with the columns {', '.join(CROWS_COLUMNS)}"
    )
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in CROWS_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        check.fail(1, "header", f"missing column(s) {', '.join(missing)}")
    pairs, found = [], []
    start = reader.line_num + 1  # where the next record begins (a quoted field may span lines)
    try:
        for row in reader:
            for column in CROWS_COLUMNS:
                check.text(start, column, row[column])
            direction = row["stereo_antistereo"].strip()
            if direction not in ("stereo", "antistereo"):
                check.fail(
                    start, "stereo_antistereo", f"{direction!r}: expected stereo or antistereo"
                )
            if row["sent_more"].strip() == row["sent_less"].strip():
                check.fail(start, "sent_less", "the same sentence as sent_more")
            # The unnamed first column of the released file numbers the pairs.
            pairs.append(
                SentencePair(
                    id=(row.get("") or "").strip() or str(start),
                    category=row["bias_type"].strip(),
                    stereo=row["sent_more"].strip(),
                    anti=row["sent_less"].strip(),
                    source="crows-pairs",
                    meta={"direction": direction},
                )
            )
            found.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        check.fail(start, "CSV", str(exc))
    _unique(check, [p.id for p in pairs], found, "first column")
    return ProbeSet("crows-pairs", None, sha256, pairs)


# -- StereoSet ---------------------------------------------------------------------------------


def _load_stereoset(path: Path, text: str, sha256: str) -> ProbeSet:
    check = _Checker(
        path,
        'a StereoSet file is {"data": {"intrasentence": [...], "intersentence": [...]}}, each '
        "example with id, bias_type, context and sentences (sentence, gold_label)",
    )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalkitError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg})", hint=check.hint
        ) from exc
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or not any(k in data for k in STEREOSET_KINDS):
        check.fail(1, "data", "no data.intrasentence or data.intersentence list")
    lines = text.splitlines()
    pairs, cursor = [], 0
    for kind in STEREOSET_KINDS:
        examples = data.get(kind, [])
        if not isinstance(examples, list):
            check.fail(_line_of(lines, f'"{kind}"'), f"data.{kind}", "must be a list")
        for i, example in enumerate(examples):
            where = f"data.{kind}[{i}]"
            if not isinstance(example, dict):
                check.fail(cursor + 1, where, "must be an object")
            line = _line_of(lines, json.dumps(str(example.get("id"))), cursor)
            cursor = line
            check.keys(
                line, where, example, {"id", "bias_type", "context", "sentences"}, {"target"}
            )
            context_line = _line_of(lines, '"context"', line - 1)
            context = check.text(context_line, f"{where}.context", example["context"])
            if kind == "intrasentence" and "BLANK" not in context:
                check.fail(
                    context_line, f"{where}.context", "an intrasentence context must hold BLANK"
                )
            sentences_line = _line_of(lines, '"sentences"', line - 1)
            if not isinstance(example["sentences"], list):
                check.fail(sentences_line, f"{where}.sentences", "must be a list")
            by_label = {}
            for j, sentence in enumerate(example["sentences"]):
                here = f"{where}.sentences[{j}]"
                if not isinstance(sentence, dict):
                    check.fail(sentences_line, here, "must be an object")
                text_ = sentence.get("sentence")
                at = _line_of(lines, json.dumps(str(text_), ensure_ascii=False), sentences_line - 1)
                check.keys(at, here, sentence, {"sentence", "gold_label"}, {"id", "labels"})
                by_label[sentence["gold_label"]] = check.text(at, f"{here}.sentence", text_)
            for label in ("stereotype", "anti-stereotype"):
                if label not in by_label:
                    check.fail(
                        sentences_line, f"{where}.sentences", f"no sentence has gold_label {label}"
                    )
            stereo, anti = by_label["stereotype"], by_label["anti-stereotype"]
            if kind == "intersentence":  # the continuation is scored after its context
                stereo, anti = f"{context} {stereo}", f"{context} {anti}"
            pairs.append(
                SentencePair(
                    id=str(example["id"]),
                    category=check.text(line, f"{where}.bias_type", example["bias_type"]),
                    stereo=stereo,
                    anti=anti,
                    source=f"stereoset-{kind}",
                    meta={"target": example.get("target")},
                )
            )
    version = doc.get("version")
    return ProbeSet("stereoset", str(version) if version else None, sha256, pairs)
