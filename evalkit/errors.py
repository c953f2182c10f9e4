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
