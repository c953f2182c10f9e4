"""Decoding for the server: requests that wait together are decoded together.

One background thread takes every request waiting when it is free (up to ``max_batch``),
groups them by decoding parameters and decodes each group as one batch through
:func:`evalkit.generation.generate`, so a served answer is the one an evaluation run gives for
the same prompt and parameters. A request that arrives while a batch decodes goes into the next
batch. The waiting line is bounded: past ``max_waiting`` a request is refused at once (the
server answers 429 with Retry-After) instead of piling up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from evalkit.generation import DecodingConfig, Generation, generate


@dataclass
class Job:
    """One request to decode. ``on_token(tokens)`` and ``done(generation or exception)`` are
    called on the engine's thread."""

    messages: list[dict]
    config: DecodingConfig
    done: Callable[[Generation | BaseException], None]
    on_token: Callable[[list[int]], None] | None = None
    extra: dict = field(default_factory=dict)


class Busy(Exception):
    """The waiting line is full."""


class Engine:
    """The decoding thread of one model."""

    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_waiting: int = 256):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self._waiting: queue.Queue[Job | None] = queue.Queue(maxsize=max_waiting)
        self.running = 0
        self._thread = threading.Thread(target=self._run, name="evalkit-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    def submit(self, job: Job) -> None:
        try:
            self._waiting.put_nowait(job)
        except queue.Full:
            raise Busy from None

    def close(self) -> None:
        """Finish what is decoding, then stop (what still waits is refused by the caller)."""
        self._waiting.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._waiting.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._waiting.put(None)  # stop after this batch
                    break
                jobs.append(more)
            groups: dict[str, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.config.key(), []).append(job)
            for group in groups.values():
                self._decode(group)

    def _decode(self, group: list[Job]) -> None:
        def on_token(index: int, tokens: list[int]) -> None:
            if group[index].on_token is not None:
                group[index].on_token(tokens)

        self.running = len(group)
        try:
            out = generate(
                self.model,
                self.tokenizer,
                [j.messages for j in group],
                group[0].config,
                batch_size=len(group),
                on_token=on_token,
            )
        except Exception as exc:  # the server turns it into a 500 and logs it
            out = [exc] * len(group)
        finally:
            self.running = 0
        for job, result in zip(group, out):
            job.done(result)
