"""The model server: an OpenAI-compatible API that logs every exchange and exports metrics.

``POST /v1/chat/completions`` (plain and streamed), ``GET /v1/models``, ``POST /v1/feedback``
(a verdict on a response, at any time), ``POST /v1/events`` (exchanges of a model served
elsewhere), ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``. Every refusal is OpenAI's
error body with the status that fits; a user's mistake is never a 500. A chat completion or
feedback refused is logged with its status, as one answered is.

Safe by default: it binds 127.0.0.1, and binding anywhere else needs API keys
(``api_key_file``: one a line; kept as sha256 hashes, compared in constant time).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from fastapi import Request  # at module level: FastAPI resolves the routes' annotations here

from evalkit.errors import EvalkitError, unknown_name
from evalkit.generation import DecodingConfig, Generation, TextStream
from monitor.engine import Busy, Engine, EngineProcess, Job, Stopped
from monitor.events import (
    BadEvent,
    EventLog,
    LogConfig,
    events_table,
    holds_response,
    make_event,
    new_id,
)
from monitor.protocol import (
    MAX_EVENTS,
    ChatCompletionRequest,
    EventsBatch,
    Feedback,
    OpenAIError,
)

log = logging.getLogger(__name__)


ENGINES = ("process", "thread")  # where decoding runs: see ServeConfig.engine


@dataclass(frozen=True)
class ServeConfig:
    """What ``evalkit serve`` starts; the limits keep one client from taking the server down."""

    model: str  # model directory (Hugging Face format)
    name: str | None = None  # the model's name in the API (default: the directory's name)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: str | None = None
    device: str | None = None
    allow_template_mismatch: bool = False
    max_batch: int = 32  # requests decoded together
    max_waiting: int = 256  # requests waiting to be decoded; more are refused with 429
    # "process": decoding in a process of its own (vLLM's engine core), beside the HTTP side;
    # "thread": in a thread of the server's process, sharing its GIL (the reference)
    engine: str = "process"
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_tokens: int = 1024  # the most tokens a request may ask to generate
    timeout_s: float = 120.0  # a request not answered by then ends with 504
    workers: int = 1  # processes, each with the model loaded; metrics add up across them
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise unknown_name("engine", self.engine, ENGINES)
        if not _loopback(self.host) and not self.api_key_file:
            raise EvalkitError(
                f"binding {self.host} serves the model beyond this machine, so API keys are "
                "required",
                hint="pass --api-key-file FILE (one key a line), or bind 127.0.0.1",
            )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_keys(path: str | None) -> list[bytes]:
    """sha256 of each key in the file; the keys themselves are not kept."""
    if not path:
        return []
    try:
        keys = [k.strip() for k in Path(path).read_text().splitlines() if k.strip()]
    except OSError as exc:
        raise EvalkitError(f"cannot read API keys from {path}: {exc.strerror or exc}") from None
    if not keys:
        raise EvalkitError(f"{path} holds no API key", hint="one key a line")
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def _template_check(model_dir: Path, fingerprint: str, store: Path | None) -> str | None:
    """Why the served chat template differs from the one its training run or its last gate
    report recorded, or None."""
    from evalkit.provenance import model_hash, model_lineage

    recorded = []
    run = model_lineage(model_dir).get("training_run")
    summary = Path(run) / "summary.json" if run else None
    if summary and summary.is_file():
        trained = json.loads(summary.read_text()).get("chat_template_fingerprint")
        recorded.append(("trained", trained))
    if store is not None and store.is_file():
        from evalkit.gate import last_report_for
        from evalkit.store import open_store

        with open_store(store) as con:
            report = last_report_for(con, model_hash(model_dir))
        if report:
            recorded.append(("gated", report["candidate"].get("chat_template_fingerprint")))
    for how, value in recorded:
        if value and value != fingerprint:
            return f"{how} with chat template {value[:12]}, served with {fingerprint[:12]}"
    return None


@dataclass(frozen=True)
class DriftSetup:
    """A drift job to run beside the server (``monitor.drift.job``): every ``every`` seconds
    it judges the served model's latest window and sets the drift gauges of ``/metrics``."""

    reference: object  # monitor.drift.detector.Reference
    config: object  # monitor.drift.detector.DriftConfig
    featurizer: object  # monitor.drift.job.Featurizer
    every: float
    label: str  # the reference's spec, as the store records it


class Server:
    """A model with its decoding engine, event log, metrics and drift job."""

    def __init__(
        self,
        config: ServeConfig,
        events_dir: Path,
        store: Path | None = None,
        registry=None,
        drift: DriftSetup | None = None,
    ):
        from prometheus_client import CollectorRegistry

        from evalkit.models import load_model
        from evalkit.perplexity import context_length
        from evalkit.provenance import chat_template_fingerprint, model_hash, model_lineage
        from monitor.metrics import server_metrics

        self.config = config
        model_dir = Path(config.model).resolve()
        self.name = config.name or model_dir.name
        self.keys = read_api_keys(config.api_key_file)
        # with the engine in its own process, this one reads the model's configs, not weights
        self.model, self.tokenizer = load_model(
            model_dir, device=config.device, weights=config.engine == "thread"
        )
        self.context = context_length(self.model, self.tokenizer)
        self.identity = {
            "model_hash": model_hash(model_dir),
            "chat_template_fingerprint": chat_template_fingerprint(self.tokenizer),
            "lineage": model_lineage(model_dir),
        }
        self.mismatch = _template_check(
            model_dir, self.identity["chat_template_fingerprint"], store
        )
        if self.mismatch and not config.allow_template_mismatch:
            raise EvalkitError(
                f"{model_dir}: {self.mismatch}",
                hint="serve the template the model was trained with, or pass "
                "--allow-template-mismatch",
            )
        self.registry = registry or CollectorRegistry()
        self.metrics = server_metrics(self.registry)
        self.metrics.model_info.labels(
            self.name, self.identity["model_hash"], self.identity["chat_template_fingerprint"]
        ).set(1)
        self.metrics.template_mismatch.labels(self.name).set(1 if self.mismatch else 0)
        self.metrics.feedback.labels(self.name, "thumbs_up")  # every series from the start
        self.metrics.events_ingested.labels(self.name)
        self.metrics.requests.labels(self.name, "200", "stop")
        lost = self.metrics.events_lost.labels(self.name)
        self.events = EventLog(events_dir, config.log, on_lost=lost.inc)
        options = {"max_batch": config.max_batch, "max_waiting": config.max_waiting}
        if config.engine == "thread":
            self.engine = Engine(self.model, self.tokenizer, on_step=self._flush, **options)
        else:
            self.engine = EngineProcess(model_dir, config.device, on_step=self._flush, **options)
        self.responses: dict[str, None] = {}  # recent response ids, for feedback
        self._inbox: LoopInbox | None = None
        self.drift = None
        # The drift job judges the exchanges this server logs: after a restart it does not
        # judge the last window of the process before (whose alerts that one raised, or not).
        if drift is not None:
            from monitor.drift.job import DriftJob
            from monitor.metrics import drift_metrics

            self.drift = DriftJob(
                drift.reference, drift.config, events_dir, drift.featurizer, every=drift.every,
                model=self.name, reference_label=drift.label, store=store,
                metrics=drift_metrics(self.registry), filter_model=True,
                since=datetime.now(UTC),
            ).start()  # fmt: skip

    def _flush(self) -> None:
        if self._inbox is not None:
            self._inbox.flush()

    def inbox(self, loop: asyncio.AbstractEventLoop) -> LoopInbox:
        """Where the engine's callbacks hand the event loop their calls."""
        if self._inbox is None or self._inbox.loop is not loop:
            self._inbox = LoopInbox(loop)
        return self._inbox

    def close(self) -> None:
        if self.drift is not None:
            self.drift.close()
        self.engine.close()
        self.events.close()

    def record(self, events: list[dict]) -> None:
        self.events.extend(events)
        self.metrics.events_ingested.labels(self.name).inc(len(events))


class LoopInbox:
    """Calls from the engine's callbacks (on its thread, or on the thread that reads from its
    process) into the event loop, handed over once a decoding step.

    At every step the engine has a token for every streamed row; waking the loop for each
    (a write to its pipe, and the two threads trading the GIL) took a fifth of the engine's
    time. :meth:`call` only queues; :meth:`flush`, after the step, wakes the loop once. The
    calls run in the order they were made."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.calls: collections.deque = collections.deque()

    def call(self, function, *args) -> None:
        self.calls.append((function, args))

    def flush(self) -> None:
        if self.calls:
            self.loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        while self.calls:
            function, args = self.calls.popleft()
            function(*args)


def create_app(server: Server):
    """The ASGI app over a loaded :class:`Server`."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.exceptions import HTTPException

    from monitor.metrics import exposition

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()  # uvicorn's graceful shutdown (SIGTERM, SIGINT) flushes the log
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # its live gauges leave the sums
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(title="evalkit serve", lifespan=lifespan)
    name = server.name

    def refuse(request: Request, error: OpenAIError, log_it: bool = True) -> JSONResponse:
        """OpenAI's error body; a refused exchange or feedback goes to the log with its status."""
        kind = {"/v1/chat/completions": "exchange", "/v1/feedback": "feedback"}.get(
            request.url.path
        )
        if kind and request.method == "POST" and log_it and not error.logged:
            if kind == "exchange":  # counted where it was refused, as the answered ones are
                server.metrics.requests.labels(name, str(error.status), "none").inc()
            refusal = make_event(
                type=kind,
                request_id=new_id("req"),
                model=name,
                model_version=server.identity["model_hash"],
                status=error.status,
                error=error.message,
            )
            try:
                server.record([refusal])
            except EvalkitError:  # the log is closed: the server is stopping
                log.warning("a %d refusal is not logged: the log is closed", error.status)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError):
        return refuse(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":  # its loc is a character, not a field
            error, at = (first.get("ctx") or {}).get("error"), first["loc"][-1]
            return refuse(
                request, OpenAIError(400, f"the body is not JSON: {error} (character {at})")
            )
        path = []
        for part in first.get("loc", ())[1:]:
            if isinstance(part, str) and "[" in part:
                break  # a union member's tag (``function-after[...]``), not a field
            path.append(str(part))
        where = ".".join(path) or None
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return refuse(request, OpenAIError(400, message, param=where))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # a bug: uvicorn logs the traceback
        return refuse(request, OpenAIError(500, "the server failed", type="server_error"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return refuse(request, OpenAIError(exc.status_code, str(exc.detail), type=kind))

    def refusal(request: Request) -> JSONResponse | None:
        """The answer to a request refused before it is read: no key, no or too long a body."""
        length = request.headers.get("content-length")
        allowed = True
        if server.keys and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            digest = hashlib.sha256(given.encode()).digest()
            allowed = any(hmac.compare_digest(digest, key) for key in server.keys)
        if request.method == "POST" and not (length or "").isdigit():
            # A body of unstated length could be any size: ask for one that says.
            error = OpenAIError(411, "a request body needs a Content-Length")
            return refuse(request, error, log_it=allowed)  # strangers do not write the log
        if int(length or 0) > server.config.max_body_bytes:
            error = OpenAIError(413, f"the body is over {server.config.max_body_bytes} bytes")
            return refuse(request, error, log_it=allowed)
        if not allowed:
            error = OpenAIError(401, "a valid API key is required", type="authentication_error")
            return refuse(request, error, log_it=False)
        return None

    def guard(inner):
        """Plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would pass every streamed
        chunk through a queue of its own)."""

        async def guarded(scope, receive, send):
            if scope["type"] == "http" and (answer := refusal(Request(scope))) is not None:
                return await answer(scope, receive, send)
            return await inner(scope, receive, send)

        return guarded

    app.add_middleware(guard)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not server.engine.alive:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        if server.engine.waiting >= server.config.max_waiting:
            return JSONResponse({"status": "busy"}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics():
        server.metrics.waiting.labels(name).set(server.engine.waiting)
        server.metrics.running.labels(name).set(server.engine.running)
        return Response(exposition(server.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        entry = {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "evalkit",
            "evalkit": server.identity | {"chat_template_mismatch": server.mismatch},
        }
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest):
        return await complete(server, body, StreamingResponse)

    @app.post("/v1/feedback")
    async def feedback(body: Feedback):
        known = body.response_id in server.responses
        if not known and not await asyncio.to_thread(_logged, server, body.response_id):
            raise OpenAIError(404, f"no response {body.response_id!r}", param="response_id")
        kinds = [k for k in ("thumbs", "rating", "comment", "correction") if getattr(body, k)]
        if not kinds:
            raise OpenAIError(400, "give thumbs, a rating, a comment or a correction")
        thumbs = {"up": 1, "down": -1}.get(body.thumbs or "")
        server.record(
            [
                make_event(
                    type="feedback",
                    response_id=body.response_id,
                    model=name,
                    user_feedback=thumbs,
                    rating=body.rating,
                    comment=body.comment,
                    correction=body.correction,
                    status=200,
                )
            ]
        )
        for kind in kinds:
            label = f"thumbs_{body.thumbs}" if kind == "thumbs" else kind
            server.metrics.feedback.labels(name, label).inc()
        return {"status": "recorded"}

    @app.post("/v1/events", openapi_extra=EVENTS_BODY)
    async def events(request: Request):
        batch = _events_batch(request.headers.get("content-type"), await request.body())
        server.record(batch)
        return {"status": "recorded", "events": batch.num_rows}

    def openapi() -> dict:
        """FastAPI's schema, with the body that ``/v1/events`` reads itself."""
        if app.openapi_schema is None:
            schemas = FastAPI.openapi(app)["components"]["schemas"]
            schemas["EventsBatch"] = EventsBatch.model_json_schema()
        return app.openapi_schema

    app.openapi = openapi
    return app


EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventsBatch"}}},
    }
}


def _events_batch(content_type: str | None, body: bytes):
    """The events of a ``POST /v1/events`` body as one table of the log's (``events_table``),
    the body parsed once; an OpenAIError says what is wrong, for an event its index and field."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if not (media.startswith("application/") and media.endswith(("/json", "+json"))):
        raise OpenAIError(415, f"the body is JSON, sent as application/json, not {content_type!r}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:  # the standard parser also takes NaN and lone surrogates
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            message = f"the body is not JSON: {exc.msg} (character {exc.pos})"
            raise OpenAIError(400, message) from None
        except (ValueError, RecursionError) as exc:  # not UTF-8, or nested too deep
            raise OpenAIError(400, f"the body is not JSON: {exc}") from None
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        message = f"events: a list of 1 to {MAX_EVENTS:,} events is required"
        raise OpenAIError(400, message, param="events")
    try:
        return events_table(events)
    except BadEvent as exc:
        raise OpenAIError(400, str(exc), param=exc.param) from None
    except EvalkitError as exc:
        raise OpenAIError(400, str(exc), param="events") from None


def _logged(server: Server, response_id: str) -> bool:
    """Whether the log holds that response id (one from before a restart); read in a thread,
    out of the event loop's way."""
    server.events.flush()
    return holds_response(server.events.folder, response_id)


def decoding(server: Server, body: ChatCompletionRequest) -> DecodingConfig:
    """The request's decoding parameters, or the OpenAI error that refuses them."""
    if body.model != server.name:
        raise OpenAIError(404, f"no model {body.model!r}", param="model", code="model_not_found")
    if body.n != 1:
        raise OpenAIError(400, "only n = 1 is served", param="n")
    for penalty in ("frequency_penalty", "presence_penalty"):
        if getattr(body, penalty):
            raise OpenAIError(400, f"{penalty} is not served", param=penalty)
    if len(body.messages) > server.config.max_messages:
        limit = server.config.max_messages
        raise OpenAIError(400, f"more than {limit} messages", param="messages")
    wanted = body.max_completion_tokens or body.max_tokens or min(256, server.config.max_tokens)
    if wanted > server.config.max_tokens:
        raise OpenAIError(
            400, f"at most {server.config.max_tokens} tokens may be generated", param="max_tokens"
        )
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    temperature = body.temperature or 0.0
    if temperature < 1e-6:  # as good as greedy; far lower, float32 logits / temperature overflow
        temperature = 0.0
    try:
        return DecodingConfig(
            max_new_tokens=wanted,
            temperature=temperature,
            top_p=body.top_p or 1.0,
            stop=tuple(s for s in stop if s),
            seed=body.seed or 0,
        )
    except EvalkitError as exc:
        raise OpenAIError(400, exc.message) from None


async def complete(server: Server, body: ChatCompletionRequest, streaming_response):
    """One chat completion: decoded by the engine, logged, measured."""
    config = decoding(server, body)
    messages = [m.model_dump() for m in body.messages]
    # rendered as evalkit.generation.render renders it: within the context (checked next), it
    # keeps every token, so the engine decodes these
    prompt = server.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=False
    )
    prompt_tokens = len(prompt)
    if prompt_tokens + config.max_new_tokens > server.context:
        raise OpenAIError(
            400,
            f"the prompt is {prompt_tokens} tokens and {config.max_new_tokens} more are asked, "
            f"over the model's context of {server.context}",
            param="messages",
            code="context_length_exceeded",
        )
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    response_id = new_id("chatcmpl")
    exchange = {
        "response_id": response_id,
        "request_id": new_id("req"),
        "conversation_id": (body.metadata or {}).get("conversation_id"),
        "model": server.name,
        "model_version": server.identity["model_hash"],
        "chat_template_fingerprint": server.identity["chat_template_fingerprint"],
        "prompt": messages,
        "prompt_tokens": prompt_tokens,
        "metadata": body.metadata,
    }
    result: asyncio.Future = loop.create_future()
    fresh = asyncio.Event()  # new tokens, or the result
    latest: list[list[int] | None] = [None]  # the tokens so far, not yet streamed
    first: list[float] = []
    inbox = server.inbox(loop)

    def arrive(tokens: list[int]) -> None:
        latest[0] = tokens
        fresh.set()

    def settle(outcome) -> None:
        _settle(result, outcome)
        fresh.set()

    def on_token(tokens: list[int]) -> None:  # on the engine's callback thread
        if not first:
            first.append(time.perf_counter())
        if body.stream:
            inbox.call(arrive, list(tokens))

    def done(outcome) -> None:  # on the engine's callback thread
        inbox.call(settle, outcome)

    try:
        server.engine.submit(Job(messages, config, done, on_token, prompt=prompt))
    except Busy:
        raise OpenAIError(
            429, "the server is busy; retry shortly", type="rate_limit_error",
            headers={"Retry-After": "1"},
        ) from None  # fmt: skip
    except Stopped:
        log.error("the decoding engine has stopped")
        raise OpenAIError(
            503, "the decoding engine has stopped: the server needs a restart",
            type="server_error",
        ) from None  # fmt: skip

    ended: list[int] = []

    def finish(status: int, generation: Generation | None, error: str | None = None) -> None:
        """Count and log the exchange, once (a client that leaves at the last chunk of an
        answer logged as given is not logged again as gone)."""
        if ended:
            return
        ended.append(status)
        latency = time.perf_counter() - started
        ttft = (first[0] - started) if first else None
        reason = generation.finish_reason if generation else "none"
        m, label = server.metrics, server.name
        m.requests.labels(label, str(status), reason).inc()
        if generation is not None:
            m.latency.labels(label).observe(latency)
            m.prompt_tokens.labels(label).observe(prompt_tokens)
            m.generation_tokens.labels(label).observe(generation.tokens)
            m.generated_tokens.labels(label).inc(generation.tokens)
            if ttft is not None:
                m.time_to_first_token.labels(label).observe(ttft)
                if generation.tokens > 1:
                    per_token = (latency - ttft) / (generation.tokens - 1)
                    m.time_per_output_token.labels(label).observe(per_token)
            server.responses[response_id] = None
            while len(server.responses) > 100_000:
                server.responses.pop(next(iter(server.responses)))
        server.record(
            [
                make_event(
                    **exchange,
                    response=generation.text if generation else None,
                    finish_reason=reason or None,
                    completion_tokens=generation.tokens if generation else None,
                    response_nll=generation.nll if generation else None,
                    latency_s=latency,
                    ttft_s=ttft,
                    status=status,
                    error=error,
                )
            ]
        )

    def usage(generation: Generation) -> dict:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generation.tokens,
            "total_tokens": prompt_tokens + generation.tokens,
        }

    created = int(time.time())
    if not body.stream:
        generation = await _wait(server, result, finish)
        finish(200, generation)
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": server.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "finish_reason": generation.finish_reason,
                }
            ],
            "usage": usage(generation),
        }

    text = TextStream(server.model, server.tokenizer, config)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, reason: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        data = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": server.name,
            "choices": [choice],
        }
        return f"data: {json.dumps(data | extra, ensure_ascii=False)}\n\n"

    async def events():
        generation = None
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                fresh.clear()
                tokens, latest[0] = latest[0], None
                # the text of every token that came since the last chunk: one chunk a token
                # while the client keeps up, fewer and longer ones when it does not
                if tokens is not None and (delta := text.delta(tokens)):
                    yield chunk({"content": delta})
                if result.done():
                    break
                if tokens is None:
                    left = server.config.timeout_s - (time.perf_counter() - started)
                    try:
                        async with asyncio.timeout(max(left, 0)):
                            await fresh.wait()
                    except TimeoutError:  # the request's time is up
                        finish(504, None, "timed out")
                        error = OpenAIError(504, "the request timed out", type="timeout_error")
                        yield f"data: {json.dumps(error.body())}\n\n"
                        return
            generation = result.result()
            if isinstance(generation, BaseException):
                raise generation
            if rest := text.rest(generation.text):
                yield chunk({"content": rest})
            yield chunk({}, generation.finish_reason)
            if include_usage:
                data = {
                    "id": response_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": server.name,
                    "choices": [],
                    "usage": usage(generation),
                }
                yield f"data: {json.dumps(data)}\n\n"
            finish(200, generation)  # logged before the end is sent: a client that has it
            yield "data: [DONE]\n\n"  # finds its exchange in the log
        except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
            finish(499, None, "the client closed the connection")
            raise
        except Exception as exc:
            log.exception("decoding failed")
            finish(500, None, repr(exc))
            error = OpenAIError(500, "decoding failed", type="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"

    return streaming_response(events(), media_type="text/event-stream")


def _settle(future: asyncio.Future, outcome) -> None:
    if not future.done():
        future.set_result(outcome)


async def _wait(server: Server, result: asyncio.Future, finish) -> Generation:
    try:
        outcome = await asyncio.wait_for(asyncio.shield(result), server.config.timeout_s)
    except TimeoutError:
        finish(504, None, "timed out")
        raise OpenAIError(504, "the request timed out", type="timeout_error", logged=True) from None
    if isinstance(outcome, BaseException):
        log.error("decoding failed: %r", outcome)
        finish(500, None, repr(outcome))
        raise OpenAIError(500, "decoding failed", type="server_error", logged=True)
    return outcome


def serve(
    config: ServeConfig,
    events_dir: Path,
    store: Path | None = None,
    drift: DriftSetup | None = None,
) -> None:
    """Load the model and serve it until SIGTERM or SIGINT (which flush the event log);
    ``store`` holds the gate reports its chat template is checked against, and the drift
    results of ``drift``'s job. With ``config.workers`` > 1, uvicorn starts that many
    processes (each loads the model and writes its own log files) and ``/metrics`` adds up
    their values through prometheus-client's multiprocess mode."""
    import uvicorn

    if config.workers == 1:
        server = Server(config, events_dir, store, drift=drift)
        uvicorn.run(create_app(server), host=config.host, port=config.port, log_level="warning")
        return
    if drift is not None:
        raise EvalkitError(
            "the drift job runs in a single server process",
            hint="serve with --workers 1, or run `evalkit monitor drift --every 1m "
            "--metrics-port PORT` beside the workers",
        )
    with tempfile.TemporaryDirectory(prefix="evalkit-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        settings = asdict(config) | {"events_dir": str(events_dir)}
        os.environ[WORKER_SETTINGS] = json.dumps(settings | {"store": str(store or "")})
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=config.workers,
            host=config.host,
            port=config.port,
            log_level="warning",
        )


WORKER_SETTINGS = "EVALKIT_SERVE_WORKER"


def worker_app():
    """The app of one worker process of :func:`serve` (uvicorn calls it in each)."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    events_dir, store = Path(settings.pop("events_dir")), settings.pop("store")
    config = ServeConfig(**(settings | {"log": LogConfig(**settings["log"])}))
    return create_app(Server(config, events_dir, Path(store) if store else None))
