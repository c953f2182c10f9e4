"""OpenAI's request and response shapes, as typed models validated at the edge, and its error
body; what the server accepts beyond them (feedback, events from elsewhere)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type, headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The parameters served; others that OpenAI defines are accepted only at their defaults."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None: greedy, as an evaluation run
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: str | None = None
    metadata: dict[str, str] | None = None  # kept with the exchange in the event log


class Feedback(BaseModel):
    """A user's verdict on one response, at any time after it."""

    model_config = ConfigDict(extra="forbid")

    response_id: str
    thumbs: Literal["up", "down"] | None = None
    rating: int | None = Field(None, ge=1, le=5)
    comment: str | None = None
    correction: str | None = None  # the response as it should have been


class EventsBatch(BaseModel):
    """Exchanges of a model served elsewhere, in the event log's columns."""

    events: list[dict] = Field(min_length=1, max_length=10_000)
