"""OpenAI's request and response shapes, as typed models validated at the edge, and its error
body; what the server accepts beyond them (feedback, events from elsewhere)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class OpenAIError(Exception):
    """A request the server refuses, as OpenAI reports it: status, message, type, param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict | None = None,
        logged: bool = False,  # the exchange it ends is in the event log already
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers, self.logged = type, headers or {}, logged

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _unicode(value):
    """``value`` if every string in it is text UTF-8 can hold. JSON's ``"\\ud800"`` escape
    decodes to a lone surrogate, which no tokenizer, Parquet file or duckdb query takes."""
    todo = [value]  # a loop, not recursion: JSON nests deeper than Python's stack
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise ValueError("a lone surrogate (such as \\ud800) is not text") from None
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: Text


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The parameters served; others that OpenAI defines are accepted only at their defaults."""

    model_config = ConfigDict(extra="ignore")

    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None: greedy, as an evaluation run
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: Text | None = None
    metadata: dict[Text, Text] | None = None  # kept with the exchange in the event log


class Feedback(BaseModel):
    """A user's verdict on one response, at any time after it."""

    model_config = ConfigDict(extra="forbid")

    response_id: Text
    thumbs: Literal["up", "down"] | None = None
    rating: int | None = Field(None, ge=1, le=5)
    comment: Text | None = None
    correction: Text | None = None  # the response as it should have been


MAX_EVENTS = 10_000  # events in one POST /v1/events


class EventsBatch(BaseModel):
    """Exchanges of a model served elsewhere, in the event log's columns: the schema of the
    ``POST /v1/events`` body, which the server reads itself (``monitor.events.events_table``
    checks it column by column, much faster than a model per event)."""

    events: list[dict] = Field(min_length=1, max_length=MAX_EVENTS)
