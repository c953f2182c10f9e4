"""The server, driven by the official ``openai`` client over real HTTP (uvicorn on a free
loopback port): answers equal an evaluation run's, every exchange is logged, every refusal is
OpenAI's error body with a 4xx."""

import asyncio
import http.client
import json
import os
import signal
import time
import urllib.error
import urllib.request

import duckdb
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from evalkit.errors import EvalkitError
from evalkit.generation import DecodingConfig, generate
from evalkit.models import load_model
from monitor.server import ServeConfig, Server

QUESTION = [{"role": "user", "content": "how are you?"}]
PROMPTS = [
    QUESTION,
    [{"role": "user", "content": "what do you like to do?"}],
    [{"role": "user", "content": "hello there"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "any plans?"}],
]


# The micro model's greedy answers are empty; seeded sampling gives text, reproducibly.
SAMPLED = {"temperature": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def served(serving, tmp_path_factory):
    with serving(tmp_path_factory.mktemp("events")) as served:
        yield served


@pytest.fixture(scope="module")
def offline(micro_model):
    """The model loaded apart from the server, for what an evaluation run answers."""
    return load_model(micro_model)


def _offline(loaded, messages, max_new_tokens=8, **decoding):
    config = DecodingConfig(max_new_tokens=max_new_tokens, **SAMPLED, **decoding)
    return generate(*loaded, [messages], config)[0]


def _post(base, path, data: bytes, content_type="application/json"):
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _logged(served, until=lambda rows: True) -> list[dict]:
    """The logged events once ``until(rows)`` holds (the log flushed; the writer's thread
    may hold a batch a little longer), at most 10 s."""
    deadline = time.monotonic() + 10
    while True:
        served.server.events.flush()
        files = f"{served.events}/*/*.parquet"
        rows = duckdb.sql(f"SELECT * FROM read_parquet('{files}', union_by_name=true)")
        rows = [dict(zip(rows.columns, row)) for row in rows.fetchall()]
        if until(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_a_plain_answer_equals_the_evaluation_run_and_is_logged(served, offline):
    answer = served.client.chat.completions.create(
        model="micro", messages=QUESTION, max_tokens=8, **SAMPLED
    )
    expected = _offline(offline, QUESTION)
    choice = answer.choices[0]
    assert expected.text and choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert answer.usage.completion_tokens == expected.tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + expected.tokens
    logged = _logged(served, lambda rows: any(e["response_id"] == answer.id for e in rows))
    event = next(e for e in logged if e["response_id"] == answer.id)
    assert event["type"] == "exchange" and event["status"] == 200
    assert json.loads(event["prompt"]) == QUESTION and event["response"] == expected.text
    assert event["model_version"] == served.server.identity["model_hash"]
    assert event["latency_s"] > 0 and event["completion_tokens"] == expected.tokens


def test_a_streamed_answer_is_the_plain_one_in_pieces(served, offline):
    stream = served.client.chat.completions.create(
        model="micro",
        messages=QUESTION,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        **SAMPLED,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = _offline(offline, QUESTION, 12)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].usage.completion_tokens == expected.tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # pieces


def test_a_stop_sequence_is_never_streamed(served, offline):
    plain = _offline(offline, PROMPTS[1], 16)
    stop = plain.text.split()[1] if len(plain.text.split()) > 1 else "zzz"
    stream = served.client.chat.completions.create(
        model="micro", messages=PROMPTS[1], max_tokens=16, stop=stop, stream=True, **SAMPLED
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == _offline(offline, PROMPTS[1], 16, stop=(stop,)).text
    assert stop not in text


def test_requests_sent_together_are_answered_as_alone(served, offline):
    async def ask_all():
        client = openai.AsyncOpenAI(base_url=served.client.base_url, api_key="x", max_retries=0)
        answers = await asyncio.gather(
            *(
                client.chat.completions.create(model="micro", messages=p, max_tokens=8, **SAMPLED)
                for p in PROMPTS * 3
            )
        )
        await client.close()
        return [a.choices[0].message.content for a in answers]

    expected = [_offline(offline, p).text for p in PROMPTS] * 3
    assert asyncio.run(ask_all()) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "gpt-4"}, openai.NotFoundError, "model"),
        ({"n": 2}, openai.BadRequestError, "n"),
        ({"max_tokens": 10_000}, openai.BadRequestError, "max_tokens"),
        ({"temperature": 5}, openai.BadRequestError, "temperature"),
        ({"messages": []}, openai.BadRequestError, "messages"),
        ({"messages": [{"role": "user", "content": "hi " * 200}]}, openai.BadRequestError, None),
        ({"frequency_penalty": 1.0}, openai.BadRequestError, "frequency_penalty"),
    ],
)
def test_a_bad_request_is_a_4xx_with_openais_error_body(served, kwargs, error, param):
    request = {"model": "micro", "messages": QUESTION, "max_tokens": 4} | kwargs
    with pytest.raises(error) as info:
        served.client.chat.completions.create(**request)
    body = info.value.body
    assert set(body) >= {"message", "type", "param", "code"} and body["message"]
    if param:
        assert param in str(body["param"])


def test_malformed_bodies_are_refused_with_an_error_body(served):
    status, body = _post(served.base, "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["message"]
    status, body = _post(served.base, "/v1/chat/completions", b"a=b", "text/plain")
    assert 400 <= status < 500 and body["error"]["message"]
    # A body over the limit is refused on its Content-Length, before it is read.
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(2 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "bytes" in json.loads(response.read())["error"]["message"]
    connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=iter([b"{}"]))  # chunked
    response = connection.getresponse()
    assert response.status == 411 and json.loads(response.read())["error"]["message"]
    connection.close()


def test_feedback_and_events_from_elsewhere_are_logged(served):
    answer = served.client.chat.completions.create(model="micro", messages=QUESTION, max_tokens=4)
    verdict = {"response_id": answer.id, "thumbs": "down", "correction": "I am well, thanks."}
    assert _post(served.base, "/v1/feedback", json.dumps(verdict).encode())[0] == 200
    status, body = _post(served.base, "/v1/feedback", b'{"response_id": "nope", "rating": 2}')
    assert status == 404 and body["error"]["param"] == "response_id"
    status, _ = _post(served.base, "/v1/feedback", b'{"response_id": "x", "rating": 9}')
    assert status == 400
    elsewhere = {
        "events": [
            {"prompt": QUESTION, "response": "fine", "model": "vllm-model", "latency_s": 0.2}
            | {"response_id": "cmpl-from-vllm"},
            {"prompt": QUESTION, "response": "ok", "timestamp": "2026-12-01T10:00:00Z"},
        ]
    }
    assert _post(served.base, "/v1/events", json.dumps(elsewhere).encode()) == (
        200,
        {"status": "recorded", "events": 2},
    )
    status, body = _post(served.base, "/v1/events", b'{"events": [{"promt": "x"}]}')
    assert status == 400 and "promt" in body["error"]["message"]
    # Feedback on an exchange served elsewhere: its id is found in the log, not in memory.
    verdict = b'{"response_id": "cmpl-from-vllm", "thumbs": "up"}'
    assert _post(served.base, "/v1/feedback", verdict)[0] == 200
    logged = _logged(served, lambda rows: {"fine", "ok"} <= {e["response"] for e in rows})
    feedback = {
        e["response_id"]: e for e in logged if e["type"] == "feedback" and e["status"] == 200
    }
    assert feedback.keys() == {answer.id, "cmpl-from-vllm"}
    assert feedback["cmpl-from-vllm"]["user_feedback"] == 1
    assert feedback[answer.id]["user_feedback"] == -1
    assert feedback[answer.id]["correction"] == "I am well, thanks."
    assert {e["response"] for e in logged} >= {"fine", "ok"}


def test_a_bad_event_of_a_batch_is_refused_by_index_and_field(served):
    batch = [{"prompt": QUESTION, "response": "never logged"}, {"latency_s": "slow"}]
    status, body = _post(served.base, "/v1/events", json.dumps({"events": batch}).encode())
    assert status == 400 and body["error"]["param"] == "events.1.latency_s"
    assert "'slow'" in body["error"]["message"]
    status, body = _post(served.base, "/v1/events", b'{"events": []}')
    assert status == 400 and body["error"]["param"] == "events"
    status, body = _post(served.base, "/v1/events", b'{"events": [{"a": 1}', "application/json")
    assert status == 400 and "not JSON" in body["error"]["message"]
    status, body = _post(served.base, "/v1/events", b'{"events": [{}]}', "text/plain")
    assert status == 415 and body["error"]["message"]
    # NaN is not JSON, but Python's json.dumps writes it: taken, as before orjson parsed bodies.
    nan = b'{"events": [{"response": "a NaN latency", "latency_s": NaN}]}'
    assert _post(served.base, "/v1/events", nan) == (200, {"status": "recorded", "events": 1})
    logged = _logged(served, lambda rows: "a NaN latency" in {e["response"] for e in rows})
    responses = {e["response"] for e in logged}
    assert "a NaN latency" in responses and "never logged" not in responses


def test_models_health_and_metrics(served, require_binary):
    import subprocess

    served.client.chat.completions.create(model="micro", messages=QUESTION, max_tokens=4)
    (model,) = served.client.models.list().data
    assert model.id == "micro"
    assert model.model_extra["evalkit"]["model_hash"] == served.server.identity["model_hash"]
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(served.base + path, timeout=10) as response:
            assert response.status == 200
    with urllib.request.urlopen(served.base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["evalkit_requests"].samples
    assert any(
        s.labels == {"model_name": "micro", "status": "200", "finish_reason": "length"}
        and s.value >= 1
        for s in requests
        if s.name == "evalkit_requests_total"
    )
    for name in (
        "evalkit_e2e_request_latency_seconds",
        "evalkit_time_to_first_token_seconds",
        "evalkit_generation_tokens",
        "evalkit_model_info",
    ):
        assert name in families
    labels = {k for f in families.values() for s in f.samples for k in s.labels}
    assert not labels & {"response_id", "user", "prompt"}
    promtool = require_binary("promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_binding_beyond_loopback_needs_api_keys(micro_model, tmp_path, serving):
    with pytest.raises(EvalkitError, match="API keys are required"):
        ServeConfig(str(micro_model), host="gpu-box.internal")  # any non-loopback name
    ServeConfig(str(micro_model), host="::1")  # loopback: no key needed
    keys = tmp_path / "keys.txt"
    keys.write_text("first-key\nsecond-key\n")
    with serving(tmp_path / "events", api_key_file=str(keys)) as served:
        with pytest.raises(openai.AuthenticationError):
            served.client.models.list()
        url = served.client.base_url
        keyed = openai.OpenAI(base_url=url, api_key="second-key", max_retries=0)
        assert keyed.models.list().data[0].id == "micro"
        with urllib.request.urlopen(served.base + "/healthz", timeout=10) as response:
            assert response.status == 200  # probes need no key
    assert b"first-key" not in repr(vars(served.server)).encode()  # kept hashed


def test_the_client_of_a_model_served_elsewhere_counts_every_event(served, tmp_path, free_port):
    from monitor.client import EventClient

    client = EventClient(served.base, max_batch=7, max_wait_s=0.05)
    for i in range(20):
        client.log(prompt=QUESTION, response=f"elsewhere {i}", model="vllm-model")
    assert client.flush()
    client.close()
    assert (client.sent, client.failed, client.dropped) == (20, 0, 0)
    expected = {f"elsewhere {i}" for i in range(20)}
    responses = {
        e["response"]
        for e in _logged(served, lambda rows: expected <= {e["response"] for e in rows})
    }
    assert expected <= responses

    unreachable = EventClient(f"http://127.0.0.1:{free_port()}", retries=0, max_wait_s=0.01)
    unreachable.log(prompt=QUESTION, response="lost?")
    unreachable.close()
    assert (unreachable.sent, unreachable.failed) == (0, 1)  # counted, not silent

    direct = EventClient(events_dir=tmp_path, max_wait_s=0.01)
    direct.log(prompt=QUESTION, response="straight to the log")
    direct.close()
    assert direct.sent == 1 and list(tmp_path.glob("date=*/*.parquet"))


def test_the_client_sends_a_batch_over_the_body_limit_in_halves(serving, tmp_path):
    from monitor.client import EventClient

    with serving(tmp_path / "events", max_body_bytes=20_000) as served:
        client = EventClient(served.base, max_batch=100, max_wait_s=0.05)
        for i in range(100):  # about 90 kB in one batch
            client.log(prompt=QUESTION, response=f"long {i} " + "x" * 500)
        client.close()
        assert (client.sent, client.failed, client.dropped) == (100, 0, 0)
        expected = {f"long {i} " + "x" * 500 for i in range(100)}
        logged = _logged(served, lambda rows: expected <= {e["response"] for e in rows})
    assert expected <= {e["response"] for e in logged}


def test_a_template_other_than_the_gated_one_is_refused(micro_model, tmp_path, serving):
    from evalkit.gate.report import REPORTS_SCHEMA
    from evalkit.provenance import model_hash
    from evalkit.store import open_store

    store = tmp_path / "evalkit.duckdb"
    report = {
        "candidate": {"model_hash": model_hash(micro_model), "chat_template_fingerprint": "x"}
    }
    with open_store(store) as con:
        con.execute(REPORTS_SCHEMA)
        con.execute(
            "INSERT INTO gate_reports VALUES ('r1', 'b', 'c', '{}', 'pass', now(), '', ?)",
            [json.dumps(report)],
        )
    with pytest.raises(EvalkitError, match="gated with chat template x"):
        Server(ServeConfig(str(micro_model)), tmp_path / "refused", store)
    allowed = Server(
        ServeConfig(str(micro_model), allow_template_mismatch=True), tmp_path / "e", store
    )
    try:
        assert "gated with chat template x" in allowed.mismatch
        labels = {"model_name": allowed.name}
        assert allowed.registry.get_sample_value("evalkit_chat_template_mismatch", labels) == 1
    finally:
        allowed.close()


def test_an_engine_process_that_dies_fails_readiness_and_requests_with_503(serving, tmp_path):
    with serving(tmp_path / "events") as served:
        assert _get(served.base, "/readyz") == (200, {"status": "ready"})
        engine = served.server.engine
        os.kill(engine.process.pid, signal.SIGKILL)
        engine.process.join(10)
        deadline = time.monotonic() + 10
        while engine.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _get(served.base, "/readyz") == (503, {"status": "engine stopped"})
        body = json.dumps({"model": "micro", "messages": QUESTION}).encode()
        status, error = _post(served.base, "/v1/chat/completions", body)
        assert status == 503 and error["error"]["type"] == "server_error", error
        assert "engine has stopped" in error["error"]["message"]
        rows = _logged(served, lambda rows: any(r["status"] == 503 for r in rows))
        assert [r["status"] for r in rows if r["type"] == "exchange"] == [503]


def test_an_unknown_engine_is_refused_by_name(micro_model):
    refusal = r"unknown engine 'threads'\n  hint: did you mean: thread"
    with pytest.raises(EvalkitError, match=refusal):
        ServeConfig(str(micro_model), engine="threads")
