"""The server's engine: iteration-level batching gives every request the offline answer, in a
thread of this process (the reference) and in a process of its own (the server's default)."""

import shutil
import threading
from dataclasses import replace

import pytest

from evalkit.errors import EvalkitError
from evalkit.generation import DecodingConfig, generate
from evalkit.models import load_model
from monitor.engine import Busy, Engine, EngineProcess, Job

QUESTIONS = [
    "Hello there",
    "What do you like to do on weekends?",
    "Tell me a story about a dog",
    "hi",
    "How are you?",
    "Do you like music?",
    "What is your favourite food and why?",
    "ok",
]
CONVERSATIONS = [[{"role": "user", "content": q}] for q in QUESTIONS]
GREEDY = DecodingConfig(max_new_tokens=12)
SAMPLED = DecodingConfig(max_new_tokens=12, temperature=1.0, seed=7)
PENALIZED = DecodingConfig(
    max_new_tokens=12, temperature=1.0, seed=7, repetition_penalty=1.3, no_repeat_ngram_size=2
)
CONFIGS = [GREEDY, SAMPLED, PENALIZED]


@pytest.fixture(scope="module")
def loaded(micro_model):
    return load_model(micro_model)


def start(kind, loaded, model_dir, **options):
    if kind == "thread":
        return Engine(*loaded, **options)
    return EngineProcess(str(model_dir), **options)


@pytest.fixture(scope="module", params=["thread", "process"])
def engine(request, loaded, micro_model):
    engine = start(request.param, loaded, micro_model, max_batch=4)
    engine.kind = request.param
    yield engine
    engine.close()


def offline(loaded, conversation, config):
    """The answer and tokens of an evaluation run of the prompt alone."""
    tokens = []
    [answer] = generate(
        *loaded, [conversation], config, batch_size=1, on_token=lambda i, t: tokens.append(list(t))
    )
    return answer, tokens


class Request:
    """One job, with what it saw: its token lists, its answer, and events in ``log``."""

    def __init__(self, name, conversation, config, log, on_token=None):
        self.name, self.tokens, self.answer, self.log = name, [], None, log
        self.finished = threading.Event()
        self.conversation, self.config, self.extra = conversation, config, on_token

    def job(self):
        def on_token(tokens):
            if not self.tokens:
                self.log.append((self.name, "first"))
            self.tokens.append(list(tokens))
            if self.extra:
                self.extra(tokens)

        def done(outcome):
            self.log.append((self.name, "done"))
            self.answer = outcome
            self.finished.set()

        return Job(self.conversation, self.config, done, on_token)

    def wait(self):
        assert self.finished.wait(60), self.name
        assert not isinstance(self.answer, BaseException), self.answer
        return self.answer


@pytest.mark.parametrize("config", CONFIGS, ids=["greedy", "sampled", "penalized"])
def test_requests_sent_together_get_the_offline_answers(loaded, engine, config):
    log: list = []
    requests = [Request(i, c, config, log) for i, c in enumerate(CONVERSATIONS)]
    for r in requests:  # more than max_batch: some join as others leave
        engine.submit(r.job())
    for r in requests:
        assert (r.wait(), r.tokens) == offline(loaded, r.conversation, config)


@pytest.mark.parametrize("config", CONFIGS, ids=["greedy", "sampled", "penalized"])
@pytest.mark.parametrize("after", [1, 5])
def test_a_request_joins_a_running_batch_and_gets_the_offline_answer(loaded, engine, config, after):
    """The second request arrives while the first decodes (its prompt longer than the first's
    cache after one token, shorter after five): it starts at the next step, and both answers
    are the offline ones."""
    config = replace(config, max_new_tokens=40)
    short = replace(config, max_new_tokens=12)
    log: list = []
    seen = []  # how many tokens the first request had when the second got its first
    second = Request(
        "second", CONVERSATIONS[6], short, log, lambda t: seen.append(len(first.tokens))
    )

    def arrive(tokens):
        if len(tokens) == after:
            engine.submit(second.job())

    first = Request("first", CONVERSATIONS[7], config, log, on_token=arrive)
    engine.submit(first.job())
    assert (first.wait(), first.tokens) == offline(loaded, first.conversation, config)
    assert (second.wait(), second.tokens) == offline(loaded, second.conversation, short)
    assert first.answer.tokens == 40
    # the second's first token came at the step after it arrived, long before the first ended
    assert log.index(("second", "first")) < log.index(("first", "done"))
    # (one arriving during a prefill joins after the step that follows it; in a process of
    # its own the engine goes on decoding while the request crosses over)
    assert seen[0] in (after, after + 1) if engine.kind == "thread" else seen[0] >= after


def test_a_request_with_other_parameters_waits_for_the_batch_to_drain(loaded, engine):
    log: list = []
    config = DecodingConfig(max_new_tokens=20, temperature=1.0, seed=7)
    other = Request("other", CONVERSATIONS[1], GREEDY, log)
    same = Request("same", CONVERSATIONS[2], config, log)

    def arrive(tokens):
        if len(tokens) == 2:
            engine.submit(other.job())
            engine.submit(same.job())  # behind `other`: it does not overtake it

    first = Request("first", CONVERSATIONS[7], config, log, on_token=arrive)
    engine.submit(first.job())
    for r in (first, other, same):
        assert (r.wait(), r.tokens) == offline(loaded, r.conversation, r.config)
    assert log.index(("first", "done")) < log.index(("other", "first"))
    assert log.index(("other", "first")) < log.index(("same", "first"))


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_past_max_waiting_a_request_is_refused_and_the_others_answered(loaded, micro_model, kind):
    """One row decodes (max_batch 1) and two may wait: of ten sent at once, the first three at
    most are taken (the first may not have started yet), the rest refused at once with Busy,
    and every one taken gets its offline answer."""
    engine = start(kind, loaded, micro_model, max_batch=1, max_waiting=2)
    config = replace(SAMPLED, max_new_tokens=40)
    log: list = []
    taken, refused = [], 0
    try:
        for i in range(10):
            request = Request(i, CONVERSATIONS[i % len(CONVERSATIONS)], config, log)
            try:
                engine.submit(request.job())
                taken.append(request)
            except Busy:
                refused += 1
        assert 2 <= len(taken) <= 3 and refused == 10 - len(taken)
        for r in taken:
            assert (r.wait(), r.tokens) == offline(loaded, r.conversation, config)
    finally:
        engine.close()


def test_weights_that_do_not_load_in_the_engine_process_fail_its_start(micro_model, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(micro_model, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EvalkitError, match=f"cannot load the model weights in {broken}"):
        EngineProcess(str(broken))
