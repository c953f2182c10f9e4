"""The one exception type a user's mistake raises: the CLI prints it without a traceback."""


class EvalkitError(Exception):
    """A problem with the user's input or environment, with a hint on what to do.

    >>> raise EvalkitError("corpus.jsonl: line 3 is not JSON", hint="fix or remove the line")
    """

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


def unknown_name(what: str, name, known, *, where: str = "") -> EvalkitError:
    """The error for a name that is not among ``known``, with "did you mean" where one is close.

    >>> raise unknown_name("metric", "blue", ["bleu", "chrf"])  # Unknown metric 'blue'...
    """
    import difflib

    known = sorted(map(str, known))
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean: {close[0]}?" if close else f"known: {', '.join(known) or 'none'}"
    prefix = f"{where}: " if where else ""
    return EvalkitError(f"{prefix}unknown {what} {name!r}", hint=hint)


def check_keys(given, known, *, what: str, where: str) -> None:
    """Every key of a config table is a known one: a typo is an error, never a silent default."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise unknown_name(what, unknown[0], known, where=where)
