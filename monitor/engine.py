"""Decoding for the server: iteration-level batching, the way vLLM schedules.

One background thread decodes a running batch one token at a time with
:class:`evalkit.generation.Decoder`. Between two steps it takes finished rows out of the batch
(and their KV cache), and lets in waiting requests with the batch's decoding parameters
(``max_new_tokens`` aside: it is per row), up to ``max_batch`` rows: they are prefilled
together and join at the next step, instead of waiting for the whole batch to end. Requests
with other parameters wait for the batch to drain, and a request is never overtaken by a later
one with the batch's parameters. Every row is decoded as :func:`evalkit.generation.generate`
decodes it (same prompt, seed and processors), so a served answer is the one an evaluation run
gives. The waiting line is bounded: past ``max_waiting`` a request is refused at once (the
server answers 429 with Retry-After) instead of piling up.

The server runs the engine in a process of its own (:class:`EngineProcess`, as vLLM runs its
engine core), so that the decoding steps and the HTTP side do not take turns on one GIL. The
engine in a thread (:class:`Engine`, which that process runs) is the reference, and
``evalkit serve --engine thread`` keeps it in the server's own process.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import pickle
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from evalkit.accel.threads import one_thread_here, openmp_per_thread, small_model
from evalkit.errors import EvalkitError
from evalkit.generation import Decoder, DecodingConfig, Generation, prompt_seed, render
from evalkit.models import load_model


@dataclass
class Job:
    """One request to decode. ``on_token(tokens)`` and ``done(generation or exception)`` are
    called on the engine's thread."""

    messages: list[dict]
    config: DecodingConfig
    done: Callable[[Generation | BaseException], None]
    on_token: Callable[[list[int]], None] | None = None
    extra: dict = field(default_factory=dict)
    # the prompt's tokens where the caller rendered them as :func:`render` does (the server
    # counts them anyway): the engine's thread then does not render them again
    prompt: list[int] | None = None


def _group(config: DecodingConfig) -> str:
    """What rows decoded together share: every parameter but ``max_new_tokens``."""
    return replace(config, max_new_tokens=1).key()


class Busy(Exception):
    """The waiting line is full."""


class Stopped(Exception):
    """The engine has stopped: it takes no more requests."""


class Engine:
    """The decoding thread of one model."""

    def __init__(
        self, model, tokenizer, *, max_batch: int = 32, max_waiting: int = 256, on_step=None
    ):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.on_step = on_step  # called once the tokens and answers of a step are handed out
        self.max_waiting = max_waiting
        self._waiting: queue.Queue[Job | None] = queue.Queue(maxsize=max_waiting)
        self._held: list[Job] = []  # taken off the line, waiting for a batch of their own
        self.running = 0
        self._thread = threading.Thread(target=self._run, name="evalkit-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting.qsize() + len(self._held)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: Job) -> None:
        if not self.alive:
            raise Stopped
        if self.waiting >= self.max_waiting:  # held jobs count: they left the line
            raise Busy
        try:
            self._waiting.put_nowait(job)
        except queue.Full:
            raise Busy from None

    def close(self) -> None:
        """Finish what is decoding, then stop (what still waits is refused by the caller)."""
        self._waiting.put(None)
        self._thread.join()

    def _take(self, block: bool) -> bool:
        """Move what waits in line to ``_held``; False once the engine is told to stop."""
        while True:
            try:
                job = self._waiting.get(block=block)
            except queue.Empty:
                return True
            if job is None:
                return False
            self._held.append(job)
            block = False

    def _run(self) -> None:
        on_cpu = next(self.model.parameters()).device.type == "cpu"  # as the Decoder reads it
        if on_cpu and small_model(self.model) and openmp_per_thread():
            one_thread_here()  # its ops are short: one core, the others left to HTTP
        decoder: Decoder | None = None
        open_ = True
        while True:
            if open_:
                open_ = self._take(block=decoder is None and not self._held)
            if decoder is None:
                if not self._held:
                    return  # told to stop, and nothing left
                decoder = Decoder(self.model, self.tokenizer, self._held[0].config)
            jobs, prompts = self._admit(decoder)
            try:
                if jobs:
                    seeds = [prompt_seed(j.messages, j.config) for j in jobs]
                    limits = [j.config.max_new_tokens for j in jobs]
                    on_token = [j.on_token for j in jobs]
                    decoder.add(prompts, seeds, on_token, tags=jobs, limits=limits)
                    self.running = len(decoder.rows)
                    self._finish(decoder)
                    self._told()  # their first tokens, before a step more
                if decoder.rows:
                    decoder.step()
                    self._finish(decoder)
            except Exception as exc:  # the server turns it into a 500 and logs it
                failed = {id(j): j for j in jobs} | {id(r.tag): r.tag for r in decoder.rows}
                for job in failed.values():
                    job.done(exc)
                decoder.rows = []
            self.running = len(decoder.rows)
            self._told()
            if not decoder.rows:
                decoder = None

    def _told(self) -> None:
        if self.on_step is not None:
            self.on_step()

    def _finish(self, decoder: Decoder) -> None:
        for row in decoder.finished():
            row.tag.done(decoder.result(row))

    def _admit(self, decoder: Decoder) -> tuple[list[Job], list[list[int]]]:
        """The held jobs with the batch's parameters that no other job precedes, as many as
        there is room for, and their prompts (a job whose prompt fails is answered with it)."""
        room = self.max_batch - len(decoder.rows)
        key = _group(decoder.config)
        jobs: list[Job] = []
        for job in self._held:
            if len(jobs) >= room or _group(job.config) != key:
                break
            jobs.append(job)
        del self._held[: len(jobs)]
        admitted, prompts = [], []
        for job in jobs:
            prompt = job.prompt
            try:
                if prompt is None:
                    prompt = render(self.model, self.tokenizer, [job.messages], job.config)[0]
            except Exception as exc:
                job.done(exc)
                continue
            admitted.append(job)
            prompts.append(prompt)
        return admitted, prompts


class EngineProcess:
    """:class:`Engine` in a process of its own, as vLLM runs its engine core: the decoding
    steps run beside the HTTP side instead of trading one GIL with it.

    Same interface as :class:`Engine`. Jobs go to the process over a pipe; what a step decoded
    comes back in one message, and the jobs' callbacks run on this process's reader thread.
    A job is waiting until its first token or its end; past ``max_waiting`` it is refused."""

    def __init__(
        self,
        model_dir: str,
        device: str | None = None,
        *,
        max_batch: int = 32,
        max_waiting: int = 256,
        on_step=None,
    ):
        self.on_step, self.max_waiting, self.running = on_step, max_waiting, 0
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_engine_process,
            args=(child, str(model_dir), device, max_batch, max_waiting),
            name="evalkit-engine",
            daemon=True,
        )
        self.process.start()
        child.close()
        try:
            started = self._conn.recv()  # the model is loaded, or why not
        except (EOFError, OSError):
            self.process.join()
            raise EvalkitError(
                f"the engine process ended while loading {model_dir} "
                f"(exit code {self.process.exitcode})",
                hint="its output above says why; out of memory is a common cause",
            ) from None
        if isinstance(started, BaseException):
            self.process.join()
            raise started
        self._jobs: dict[int, Job] = {}
        self._unstarted: set[int] = set()
        self._next = 0
        self._reader = threading.Thread(target=self._read, name="evalkit-reader", daemon=True)
        self._reader.start()
        # at exit, before multiprocessing joins the process (which ignores its SIGTERM)
        atexit.register(self.close)

    @property
    def waiting(self) -> int:
        return len(self._unstarted)

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    def submit(self, job: Job) -> None:
        if not self.alive:
            raise Stopped
        if self.waiting >= self.max_waiting:
            raise Busy
        job_id, self._next = self._next, self._next + 1
        self._jobs[job_id] = job
        self._unstarted.add(job_id)
        try:
            self._conn.send((job_id, job.messages, job.config, job.prompt))
        except OSError:  # the process ended since the check
            self._jobs.pop(job_id, None)
            self._unstarted.discard(job_id)
            raise Stopped from None

    def close(self) -> None:
        """Finish what is decoding, then stop the process (once: a second call waits too)."""
        atexit.unregister(self.close)
        with contextlib.suppress(OSError):  # the process has ended already
            self._conn.send(None)
        self._reader.join()
        self.process.join()

    def _read(self) -> None:
        while True:
            try:
                updates, self.running = self._conn.recv()
            except (EOFError, OSError):  # a reset, where it died with messages unread
                break
            for job_id, tokens, outcome in updates:
                self._unstarted.discard(job_id)
                if tokens is not None:
                    job = self._jobs[job_id]
                    if job.on_token is not None:
                        job.on_token(tokens)
                else:
                    self._jobs.pop(job_id).done(outcome)
            if self.on_step is not None:
                self.on_step()
        self.process.join(5)
        ended = RuntimeError(f"the engine process ended (exit code {self.process.exitcode})")
        while self._jobs:  # a job submitted meanwhile fails to send, and is refused
            self._jobs.popitem()[1].done(ended)
        self._unstarted.clear()
        if self.on_step is not None:
            self.on_step()


def _sendable(outcome):
    """An outcome that crosses the pipe: an exception that does not pickle goes as its repr."""
    if isinstance(outcome, BaseException):
        try:
            pickle.loads(pickle.dumps(outcome))
        except Exception:
            return RuntimeError(repr(outcome))
    return outcome


def _engine_process(conn, model_dir: str, device, max_batch: int, max_waiting: int) -> None:
    """The engine process: load the model, decode the jobs that come in, send each step's
    tokens and answers back in one message. It ends when told to (after the rows decoding) or
    at once when the server's end of the pipe closes (the server is gone). It ignores SIGINT
    and SIGTERM, which a terminal or a service manager sends the whole group: the server
    finishes the rows decoding before it lets the engine go."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model, tokenizer = load_model(model_dir, device=device)
    except Exception as exc:
        conn.send(_sendable(exc))
        return
    updates: list[tuple] = []  # written on the engine's thread only

    def step_done() -> None:
        if updates:
            with contextlib.suppress(OSError):  # the server is gone; its closed pipe ends us
                conn.send((updates.copy(), engine.running))
            updates.clear()

    engine = Engine(
        model, tokenizer, max_batch=max_batch, max_waiting=max_waiting, on_step=step_done
    )
    conn.send(None)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            break
        job_id, messages, config, prompt = message
        engine.submit(
            Job(
                messages,
                config,
                done=lambda outcome, i=job_id: updates.append((i, None, _sendable(outcome))),
                on_token=lambda tokens, i=job_id: updates.append((i, list(tokens), None)),
                prompt=prompt,
            )
        )
    engine.close()
    step_done()
