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
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from evalkit.accel.threads import one_thread_here, openmp_per_thread, small_model
from evalkit.generation import Decoder, DecodingConfig, Generation, prompt_seed, render


@dataclass
class Job:
    """One request to decode. ``on_token(tokens)`` and ``done(generation or exception)`` are
    called on the engine's thread."""

    messages: list[dict]
    config: DecodingConfig
    done: Callable[[Generation | BaseException], None]
    on_token: Callable[[list[int]], None] | None = None
    extra: dict = field(default_factory=dict)


def _group(config: DecodingConfig) -> str:
    """What rows decoded together share: every parameter but ``max_new_tokens``."""
    return replace(config, max_new_tokens=1).key()


class Busy(Exception):
    """The waiting line is full."""


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

    def submit(self, job: Job) -> None:
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
            try:
                prompt = render(self.model, self.tokenizer, [job.messages], job.config)[0]
            except Exception as exc:
                job.done(exc)
                continue
            admitted.append(job)
            prompts.append(prompt)
        return admitted, prompts
