"""What the demo prints: a line per step with its time, and under it what the step did."""

from __future__ import annotations

import time
from contextlib import contextmanager

STEPS = 13


class Progress:
    """One line per step with its time (bars of the libraries show on a terminal only)."""

    def __init__(self) -> None:
        self.number = 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, title: str):
        self.number += 1
        started = time.perf_counter()
        print(f"\n[{self.number:>2}/{STEPS}] {title}", flush=True)
        yield
        seconds = time.perf_counter() - started
        self.seconds[title] = round(seconds, 1)
        print(f"[{self.number:>2}/{STEPS}] done in {seconds:.1f} s", flush=True)


def say(line: str) -> None:
    """A line of what a step did, under the step's own."""
    print(f"        {line}", flush=True)
