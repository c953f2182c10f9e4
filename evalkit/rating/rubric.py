"""The rating form: guidelines with anchored Likert dimensions, and the rating a person submits.

A rubric is read from TOML (the default ships beside this module as ``rubric.toml``) into
dataclasses. Its ``version`` is stored with every rating, so a change of wording never mixes
silently with ratings given under the old one.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from evalkit.errors import EvalkitError, check_keys

DEFAULT_RUBRIC = Path(__file__).with_name("rubric.toml")
LIKERT = (1, 2, 3, 4, 5)
CHOICES = ("A", "B", "tie", "both_bad")  # pairwise: A, B, a tie, or neither acceptable
THUMBS = ("up", "down")
ITEM_KINDS = ("single", "pair", "correction")  # what the instructions are given for


@dataclass(frozen=True)
class Dimension:
    """One Likert dimension: the question asked and what each point 1..5 means."""

    name: str
    question: str
    anchors: dict[int, str]

    def __post_init__(self) -> None:
        if sorted(self.anchors) != list(LIKERT):
            raise ValueError(
                f"dimension {self.name!r}: anchors must describe exactly the points 1 to 5, "
                f"got {sorted(self.anchors)}"
            )


@dataclass(frozen=True)
class Rubric:
    name: str
    version: str
    dimensions: tuple[Dimension, ...]
    instructions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [d.name for d in self.dimensions]
        if not names:
            raise ValueError("a rubric needs at least one dimension")
        if len(set(names)) != len(names):
            raise ValueError(f"dimension names repeat: {names}")

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def check_dimension(self, name: str) -> str:
        """``name`` if the rubric has it, else an error suggesting the closest dimension."""
        if name not in self.dimension_names:
            close = difflib.get_close_matches(name, self.dimension_names, n=1)
            raise EvalkitError(
                f"unknown rubric dimension {name!r}"
                + (f"; did you mean: {close[0]}?" if close else ""),
                hint=f"rubric {self.name} {self.version} has: {', '.join(self.dimension_names)}",
            )
        return name


def load_rubric(path: str | Path | None = None) -> Rubric:
    """Read a rubric TOML file (the default one when ``path`` is None)."""
    path = Path(path) if path else DEFAULT_RUBRIC
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvalkitError(
            f"cannot read rubric {path}: {exc.strerror or exc}",
            hint="pass the path of a rubric TOML file",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise EvalkitError(
            f"rubric {path} is not valid TOML: {exc}", hint="fix the file at that line"
        ) from exc
    where = f"rubric {path}"
    check_keys(data, ("name", "version", "instructions", "dimensions"), what="key", where=where)
    if isinstance(data.get("instructions"), dict):
        check_keys(
            data["instructions"], ITEM_KINDS, what="item kind", where=f"{where}: instructions"
        )
    for number, d in enumerate(data.get("dimensions") or [], start=1):
        if isinstance(d, dict):
            check_keys(
                d, ("name", "question", "anchors"), what="key", where=f"{where}: dimension {number}"
            )
    try:
        dimensions = tuple(
            Dimension(
                name=d["name"],
                question=d["question"],
                anchors={int(point): str(text) for point, text in d["anchors"].items()},
            )
            for d in data["dimensions"]
        )
        return Rubric(
            name=data.get("name", path.stem),
            version=str(data["version"]),
            dimensions=dimensions,
            instructions=dict(data.get("instructions", {})),
        )
    except KeyError as exc:
        raise EvalkitError(
            f"rubric {path}: missing field {exc.args[0]!r}",
            hint="see the default rubric.toml in the evalkit package for the fields",
        ) from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise EvalkitError(f"rubric {path}: {exc}", hint="fix the file and try again") from exc


@dataclass(frozen=True)
class Rating:
    """What an annotator submits; which fields apply depends on the item's kind.

    single: ``scores`` (Likert 1-5 for every rubric dimension) and/or ``thumbs`` (up, down);
    pair: ``choice`` (A, B, tie, both_bad); correction: ``corrected`` (the edited response).
    Any kind: ``skip_reason`` alone, to pass on an item.
    """

    scores: dict[str, int] = field(default_factory=dict)
    thumbs: str | None = None
    choice: str | None = None
    corrected: str | None = None
    skip_reason: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Rating:
        """A rating from JSON-like data, naming any unknown key."""
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                raise EvalkitError(
                    f"unknown rating field {key!r}"
                    + (f"; did you mean: {close[0]}?" if close else ""),
                    hint=f"a rating has: {', '.join(known)}",
                )
        for key, value in data.items():
            wanted = dict if key == "scores" else str
            if value is not None and not isinstance(value, wanted):
                raise EvalkitError(
                    f"rating field {key!r} must be {'an object' if wanted is dict else 'a string'}"
                    f", got {value!r}"
                )
        return cls(**data)

    def check(self, kind: str, rubric: Rubric) -> None:
        """Raise an :class:`EvalkitError` unless this rating fits an item of ``kind``."""
        given = {name for name, value in asdict(self).items() if value not in (None, {})}
        if self.skip_reason is not None:
            if not self.skip_reason.strip() or given != {"skip_reason"}:
                raise EvalkitError("a skip carries a non-empty reason and nothing else")
            return
        allowed = {"single": {"scores", "thumbs"}, "pair": {"choice"}, "correction": {"corrected"}}
        if not given or not given <= allowed[kind]:
            raise EvalkitError(
                f"a {kind} item is rated with {' and/or '.join(sorted(allowed[kind]))}"
                f" (got {', '.join(sorted(given)) or 'nothing'})",
                hint="or skip it with a reason",
            )
        if self.scores:
            for name in self.scores:
                rubric.check_dimension(name)
            missing = [d for d in rubric.dimension_names if d not in self.scores]
            if missing:
                raise EvalkitError(
                    f"scores missing for: {', '.join(missing)}",
                    hint="rate every dimension of the rubric",
                )
            for name, value in self.scores.items():
                if isinstance(value, bool) or value not in LIKERT:
                    raise EvalkitError(
                        f"score {name}={value!r} is out of range",
                        hint="Likert scores are whole numbers from 1 to 5",
                    )
        if self.thumbs is not None:
            check_choice(self.thumbs, THUMBS, "thumbs")
        if self.choice is not None:
            check_choice(self.choice, CHOICES, "choice")
        if self.corrected is not None and not self.corrected.strip():
            raise EvalkitError("the corrected response is empty", hint="type the correction")


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    """Raise an :class:`EvalkitError`, suggesting the closest allowed value, unless allowed."""
    if value not in allowed:
        same_letters = [a for a in allowed if a.lower() == str(value).lower()]
        close = same_letters or difflib.get_close_matches(str(value), allowed, n=1)
        raise EvalkitError(
            f"{what} {value!r} is not one of {', '.join(allowed)}"
            + (f"; did you mean: {close[0]}?" if close else "")
        )
