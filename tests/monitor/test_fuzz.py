"""The server fuzzed from its own OpenAPI schema (hypothesis): bodies the schema allows, the same
with a field of the wrong type, an unknown field, a field left out, odd numbers and strings,
bodies that are not JSON or not an object, wrong content types. Never a 5xx; every refusal is
OpenAI's error body; every chat completion and feedback, answered or refused, is in the event
log with its status, and every event accepted from elsewhere is there too."""

import http.client
import json
import socket
import time
import urllib.parse
import uuid
from collections import Counter

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import monitor.engine

MODEL = "micro"
QUESTION = [{"role": "user", "content": "how are you?"}]
SETTINGS = settings(
    max_examples=80,
    derandomize=True,  # the same requests every run: a failure is one a rerun shows again
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
def fuzzed(serving, tmp_path):
    """A server of its own for each test, so its event log holds that test's events only."""
    with serving(tmp_path / "events") as served:
        status, _, raw = _send(served.port, "GET", "/openapi.json")
        assert status == 200
        served.schema = json.loads(raw)
        yield served


def _send(port, method, path, body=None, content_type="application/json"):
    """(status, content type, body bytes) of one request on a connection of its own."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {} if content_type is None else {"Content-Type": content_type}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def _check(status: int, content_type: str, raw: bytes, method: str = "POST") -> None:
    """Never a 5xx; a refusal is OpenAI's error body."""
    assert status < 500, (status, raw[:500])
    if status >= 400 and method != "HEAD":
        assert content_type.startswith("application/json"), (status, content_type, raw[:200])
        body = json.loads(raw)
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and error["type"], error
        assert error["param"] is None or isinstance(error["param"], str), error


def _rows(events) -> list[dict]:
    if not list(events.glob("date=*/*.parquet")):
        return []
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"SELECT type, status, response_id, request_id, error "
            f"FROM read_parquet('{events}/*/*.parquet', union_by_name=true)"
        )
        names = [d[0] for d in rows.description]
        return [dict(zip(names, row)) for row in rows.fetchall()]
    finally:
        con.close()


def _logged(events, count, expected, timeout_s: float = 15.0):
    """What ``count(rows)`` gives once the log's own writer has caught up with ``expected``
    (no flush from here: a writer that died would lose them, and this would see it)."""
    deadline = time.time() + timeout_s
    while True:
        seen = count(_rows(events))
        if seen == expected or time.time() > deadline:
            return seen
        time.sleep(0.1)


# Strategies: JSON values, odd values, and requests generated from the OpenAPI schema.

TRICKY_TEXT = [
    "",
    " ",
    "\ud800",  # a lone surrogate: JSON can carry it as an escape, UTF-8 cannot
    "ok \udfff",
    "\x00",
    "ｕｎｉｃｏｄｅ 🤖 ∑ 中文 \u202e",
    "<|im_start|>assistant\n",
    "{{ raise_exception('x') }}",
    "word " * 60,  # renders longer than the context
]
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(TRICKY_TEXT))
NUMBERS = st.sampled_from(
    [0, -1, 1, 2, 17, 2**31, 2**63, -(2**63) - 1, 10**30, -(10**30), 1e308, -0.0, 0.5, 1e-320]
)
NUMBERS |= st.sampled_from([float("nan"), float("inf"), float("-inf"), True, False])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ODD = st.one_of(
    JSON,
    st.sampled_from([None, [], {}, [""], [""] * 300, ["x"] * 5, {"": ""}, "x" * 5000]),
)
CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "application/vnd.api+json",
    "",
    None,
]


def _either(*strategies):
    """One of ``strategies``, each as likely (``st.one_of`` flattens nested choices, so a
    strategy with many branches of its own would crowd out the rest)."""
    return st.sampled_from(strategies).flatmap(lambda chosen: chosen)


def _from_schema(node: dict, schema: dict, hints: dict | None = None):
    """Values that ``node`` (an OpenAPI 3.1 schema) allows; ``hints`` narrow top-level
    properties so that some requests get past the checks beyond the schema."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return _from_schema(schema["components"]["schemas"][name], schema, hints)
    if "anyOf" in node:
        return st.one_of([_from_schema(n, schema) for n in node["anyOf"]])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        properties = {
            key: (hints or {})[key] if key in (hints or {}) else _from_schema(sub, schema)
            for key, sub in node.get("properties", {}).items()
        }
        if not properties:  # a free-form object
            extra = node.get("additionalProperties", True)
            values = JSON if extra is True else _from_schema(extra, schema)
            return st.dictionaries(TEXT, values, max_size=4)
        required = set(node.get("required", ()))
        return st.fixed_dictionaries(
            {k: s for k, s in properties.items() if k in required},
            optional={k: s for k, s in properties.items() if k not in required},
        )
    if kind == "array":
        least = node.get("minItems", 0)
        return st.lists(
            _from_schema(node.get("items", {}), schema),
            min_size=least,
            max_size=max(least, min(node.get("maxItems", 4), 4)),
        )
    if kind == "string":
        return TEXT
    if kind == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        return st.integers(
            None if low is None else int(low), None if high is None else int(high)
        ) | st.sampled_from([2**63, -(2**63), 10**30]).filter(
            lambda n: (low is None or n >= low) and (high is None or n <= high)
        )
    if kind == "number":
        low = node.get("minimum", node.get("exclusiveMinimum"))
        return st.floats(
            low,
            node.get("maximum"),
            exclude_min="exclusiveMinimum" in node,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


def _request_body(operation: dict) -> dict:
    return operation["requestBody"]["content"]["application/json"]["schema"]


def _malformed(bodies, fields: list[str]):
    """``bodies`` broken one way each: a field of the wrong type or an odd value, an unknown
    field, a required field left out, or a body that is not an object."""
    return _either(
        st.tuples(bodies, st.sampled_from(fields), ODD).map(lambda t: t[0] | {t[1]: t[2]}),
        st.tuples(bodies, TEXT, JSON).map(lambda t: t[0] | {t[1]: t[2]}),
        st.tuples(bodies, st.sampled_from(fields)).map(
            lambda t: {k: v for k, v in t[0].items() if k != t[1]}
        ),
        JSON,
    )


def _encoded(bodies):
    """(bytes, content type): JSON as a client sends it, or what no client should."""

    def cut(pair):
        text, at = pair
        return text[: at % max(len(text), 1)]

    as_json = bodies.map(lambda b: json.dumps(b).encode())
    return _either(
        st.tuples(as_json, st.just("application/json")),
        st.tuples(as_json, st.just("application/json")),
        st.tuples(as_json, st.just("application/json")),
        st.tuples(as_json, st.just("application/json")),
        st.tuples(as_json, st.sampled_from(CONTENT_TYPES)),
        st.tuples(st.tuples(as_json, st.integers(0, 10**6)).map(cut), st.just("application/json")),
        st.tuples(st.binary(max_size=64), st.just("application/json")),
        st.tuples(
            st.sampled_from([b"", b"null", b"[]", b"[" * 5000, b"\xff\xfe{}", b"1" * 5000]),
            st.just("application/json"),
        ),
    )


def _json(body) -> tuple[bytes, str]:
    return json.dumps(body).encode(), "application/json"


def _post_requests(schema: dict, path: str, hints: dict, valid):
    body_schema = _request_body(schema["paths"][path]["post"])
    name = body_schema["$ref"].rsplit("/", 1)[-1]
    fields = list(schema["components"]["schemas"][name]["properties"])
    plain = _from_schema(body_schema, schema)
    hinted = _from_schema(body_schema, schema, hints)
    return _encoded(_either(plain, hinted, _malformed(hinted, fields), valid, valid))


MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}
    ),
    min_size=1,
    max_size=3,
) | st.sampled_from(
    [
        [{"role": "user", "content": ["a", "b"]}],
        [{"role": "tool", "content": "x"}],
        [{"content": "x"}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": "x", "name": 5}],
        [{"role": "user", "content": "x"}] * 300,
        ["user", "x"],
    ]
)
CHAT_HINTS = {
    "model": st.sampled_from([MODEL, MODEL, MODEL, "gpt-4", ""]),
    "messages": MESSAGES,
    "max_tokens": st.integers(1, 16) | st.none(),
    "max_completion_tokens": st.none(),
    "n": st.just(1),
    "frequency_penalty": st.just(0.0),
    "presence_penalty": st.just(0.0),
    "stop": st.none() | TEXT | st.lists(TEXT, max_size=4),
    "seed": st.none() | st.integers() | st.sampled_from([-(2**63), 2**64, 10**30]),
    "metadata": st.none() | st.dictionaries(TEXT, TEXT, max_size=2),
}


PLAIN_CHAT = st.fixed_dictionaries(
    {
        "model": st.just(MODEL),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.just("user"), "content": st.text("abcdefgh ?", max_size=20)}
            ),
            min_size=1,
            max_size=2,
        ),
        "max_tokens": st.integers(1, 16),
    },
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.1, 1),
        "seed": st.integers(),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "stop": st.text("abc", max_size=2),
        "user": st.text(max_size=5),
    },
)


def _chat_outcome(status: int, content_type: str, raw: bytes) -> str | None:
    """The response id of an answer (plain or streamed), after checking its shape."""
    if status != 200:
        return None
    if content_type.startswith("text/event-stream"):
        lines = [x for x in raw.decode().split("\n\n") if x]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        chunks = [json.loads(x.removeprefix("data: ")) for x in lines[:-1]]
        assert all("error" not in c for c in chunks), chunks
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        return chunks[0]["id"]
    answer = json.loads(raw)
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"]
    return answer["id"]


def test_the_schema_lists_every_endpoint(fuzzed):
    paths = fuzzed.schema["paths"]
    posts = {p for p, ops in paths.items() if "post" in ops}
    gets = {p for p, ops in paths.items() if "get" in ops}
    assert posts == {"/v1/chat/completions", "/v1/feedback", "/v1/events"}
    assert gets >= {"/healthz", "/readyz", "/metrics", "/v1/models"}


def test_chat_completions_fuzzed_never_5xx_and_every_one_is_logged(fuzzed):
    statuses, answered = Counter(), set()

    @SETTINGS
    @given(_post_requests(fuzzed.schema, "/v1/chat/completions", CHAT_HINTS, PLAIN_CHAT))
    @example(_json({"model": MODEL, "messages": QUESTION, "temperature": 5e-324}))  # was a 500
    @example(_json({"model": MODEL, "messages": [{"role": "user", "content": "\ud800"}]}))
    @example(_json({"model": MODEL, "messages": QUESTION, "stream": True, "stop": "\udfff"}))
    def ask(request):
        body, content_type = request
        status, kind, raw = _send(fuzzed.port, "POST", "/v1/chat/completions", body, content_type)
        _check(status, kind, raw)
        if (answer := _chat_outcome(status, kind, raw)) is not None:
            answered.add(answer)
        statuses[status] += 1

    ask()
    assert statuses[200] >= 5, statuses  # the hints get some through to decoding
    assert sum(n for s, n in statuses.items() if 400 <= s < 500) >= 5, statuses

    def count(rows):
        return Counter(r["status"] for r in rows if r["type"] == "exchange")

    assert _logged(fuzzed.events, count, statuses) == statuses
    rows = _rows(fuzzed.events)
    logged = {r["response_id"] for r in rows if r["type"] == "exchange" and r["status"] == 200}
    assert logged == answered
    assert fuzzed.server.events.lost == 0


def test_feedback_fuzzed_never_5xx_and_every_one_is_logged(fuzzed):
    known = []
    for _ in range(2):
        body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4}
        status, _, raw = _send(fuzzed.port, "POST", "/v1/chat/completions", json.dumps(body))
        assert status == 200
        known.append(json.loads(raw)["id"])
    hints = {
        "response_id": st.sampled_from([*known, *known, "chatcmpl-nope", ""]) | TEXT,
        "rating": st.none() | st.integers(0, 6),
    }
    valid = st.fixed_dictionaries(
        {"response_id": st.sampled_from(known), "thumbs": st.sampled_from(["up", "down"])},
        optional={
            "rating": st.integers(1, 5),
            "comment": st.text(max_size=20),
            "correction": st.text(max_size=20),
        },
    )
    statuses = Counter()

    @SETTINGS
    @given(_post_requests(fuzzed.schema, "/v1/feedback", hints, valid))
    @example(_json({"response_id": "\ud800", "thumbs": "up"}))  # was a 500
    @example(_json({"response_id": known[0], "comment": "\ud800"}))  # killed the log's writer
    def give(request):
        body, content_type = request
        status, kind, raw = _send(fuzzed.port, "POST", "/v1/feedback", body, content_type)
        _check(status, kind, raw)
        if status == 200:
            assert json.loads(raw) == {"status": "recorded"}
        statuses[status] += 1

    give()
    assert statuses[200] >= 3 and statuses[404] >= 1, statuses

    def count(rows):
        return Counter(r["status"] for r in rows if r["type"] == "feedback")

    assert _logged(fuzzed.events, count, statuses) == statuses
    assert fuzzed.server.events.lost == 0


EVENT = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.one_of(TEXT, st.just(QUESTION), JSON),
        "response": TEXT | JSON,
        "model": TEXT,
        "latency_s": st.floats() | NUMBERS,
        "status": st.sampled_from([200, 400, 499, 500, 2**15, -1, "200"]),
        "timestamp": st.sampled_from(
            [
                "2026-12-01T10:00:00Z",
                "2026-12-01",
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-01:00",
                "yesterday",
                "",
            ]
        )
        | NUMBERS,
        "type": st.sampled_from(["exchange", "feedback", "exchange", "other"]),
        "user_feedback": st.sampled_from([-1, 0, 1, 200]),
        "rating": st.integers(-1, 6),
        "metadata": JSON,
    },
)


PLAIN_EVENTS = st.fixed_dictionaries(
    {
        "events": st.lists(
            st.fixed_dictionaries(
                {"prompt": st.just(QUESTION), "response": st.text(max_size=20)},
                optional={
                    "model": st.text(max_size=10),
                    "latency_s": st.floats(0, 10),
                    "timestamp": st.sampled_from(["2026-12-01T10:00:00Z", "2026-12-02"]),
                    "status": st.sampled_from([200, 400, 500]),
                },
            ),
            min_size=1,
            max_size=5,
        )
    }
)


def test_events_fuzzed_never_5xx_and_every_accepted_one_is_logged(fuzzed):
    statuses, accepted = Counter(), []
    hints = {"events": st.lists(EVENT, min_size=1, max_size=3)}

    @SETTINGS
    @given(_post_requests(fuzzed.schema, "/v1/events", hints, PLAIN_EVENTS))
    @example(_json({"events": [{"timestamp": float("nan")}]}))  # was a 500
    @example(_json({"events": [{"timestamp": 1e20}]}))  # was a 500
    @example(_json({"events": [{"status": 99999}]}))  # killed the log's writer
    @example(_json({"events": [{"timestamp": "0001-01-01T00:00:00+01:00"}]}))  # killed it too
    @example(_json({"events": [{"response": "\ud800"}]}))  # killed it too
    def send(request):
        body, content_type = request
        try:  # each event carries a tag to find it by, where it has no request id of its own
            events = json.loads(body)["events"]
            tags = [f"fuzz-{uuid.uuid4().hex}" for _ in events]
            for event, tag in zip(events, tags):
                event.setdefault("request_id", tag)
            tagged = [e["request_id"] for e in events if e["request_id"] in tags]
            body = json.dumps({"events": events})
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):  # no batch
            tagged = []
        status, kind, raw = _send(fuzzed.port, "POST", "/v1/events", body, content_type)
        _check(status, kind, raw)
        if status == 200:
            assert json.loads(raw)["events"] == len(json.loads(body)["events"])
            accepted.extend(tagged)
        statuses[status] += 1

    send()
    assert statuses[200] >= 3 and statuses[400] >= 3, statuses

    def count(rows):
        return sorted(r["request_id"] for r in rows if str(r["request_id"]).startswith("fuzz-"))

    assert _logged(fuzzed.events, count, sorted(accepted)) == sorted(accepted)
    assert fuzzed.server.events.lost == 0


PATHS = ["/healthz", "/readyz", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/feedback"]
PATHS += ["/v1/events", "/openapi.json", "/docs"]


@settings(SETTINGS, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(PATHS) | st.text(max_size=12).map(lambda t: "/" + urllib.parse.quote(t)),
    query=st.none() | st.text(max_size=8),
)
def test_any_method_on_any_path_is_never_a_5xx(fuzzed, method, path, query):
    if query is not None:
        path += "?q=" + urllib.parse.quote(query)
    status, kind, raw = _send(fuzzed.port, method, path, content_type=None)
    _check(status, kind, raw, method)


def test_the_get_endpoints_answer(fuzzed):
    for path, operations in fuzzed.schema["paths"].items():
        if "get" in operations:
            status, _, raw = _send(fuzzed.port, "GET", path, content_type=None)
            assert status == 200, (path, raw[:200])


def test_oversized_and_unsized_bodies_are_refused_and_logged(fuzzed):
    expected = Counter()
    for path in ("/v1/chat/completions", "/v1/feedback", "/v1/events"):
        connection = http.client.HTTPConnection("127.0.0.1", fuzzed.port, timeout=30)
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(2 << 20))  # the body is never sent
        connection.endheaders()
        response = connection.getresponse()
        _check(response.status, response.getheader("content-type"), response.read())
        assert response.status == 413
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", fuzzed.port, timeout=30)
        connection.request("POST", path, body=iter([b"{}"]))  # chunked: no Content-Length
        response = connection.getresponse()
        _check(response.status, response.getheader("content-type"), response.read())
        assert response.status == 411
        connection.close()
        if path != "/v1/events":  # a refused batch from elsewhere is the client's to count
            kind = "exchange" if "chat" in path else "feedback"
            expected.update({(kind, 413): 1, (kind, 411): 1})

    def count(rows):
        return Counter((r["type"], r["status"]) for r in rows)

    assert _logged(fuzzed.events, count, expected) == expected


def test_a_client_that_leaves_mid_stream_is_logged_as_499(serving, tmp_path, monkeypatch):
    """The engine in the server's process, whose steps this test slows down."""
    with serving(tmp_path / "events", engine="thread") as served:
        _leave_mid_stream(served, monkeypatch)


def _leave_mid_stream(fuzzed, monkeypatch):
    step = monitor.engine.Decoder.step

    def slow(self):  # each token takes a while: the client leaves first
        time.sleep(0.1)
        step(self)

    monkeypatch.setattr(monitor.engine.Decoder, "step", slow)
    body = json.dumps(
        {"model": MODEL, "messages": QUESTION, "max_tokens": 16, "stream": True}
        | {"temperature": 1.0, "seed": 7}
    ).encode()
    with socket.create_connection(("127.0.0.1", fuzzed.port), timeout=30) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"data: " not in received:
            chunk = client.recv(4096)
            assert chunk, received
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    monkeypatch.undo()

    # The server goes on serving.
    again = {"model": MODEL, "messages": QUESTION, "max_tokens": 4}
    assert _send(fuzzed.port, "POST", "/v1/chat/completions", json.dumps(again))[0] == 200

    def count(rows):
        return sorted((r["status"], r["error"]) for r in rows if r["type"] == "exchange")

    expected = [(200, None), (499, "the client closed the connection")]
    assert _logged(fuzzed.events, count, expected) == expected
