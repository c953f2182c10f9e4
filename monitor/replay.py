"""Test and demo traffic for a running server: calm prompts, then a drift episode.

Sends one chat completion every ``1 / rate`` seconds for ``duration`` seconds, from a pool of
worker threads so a slow answer does not delay the next request: prompts drawn (seeded) from
``calm`` until ``drift_after`` seconds, from ``drift`` afterwards. Plain HTTP (``urllib``), as
any client would send it.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from evalkit.errors import EvalkitError


@dataclass
class Replayed:
    sent: int = 0
    answered: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by status or error
    drift_started: float | None = None  # time.time() of the first drift prompt


def _model(url: str, headers: dict) -> str:
    request = urllib.request.Request(f"{url}/v1/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["data"][0]["id"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
        raise EvalkitError(
            f"no model server at {url}: {exc}", hint="start one with `evalkit serve`"
        ) from None


def replay(
    url: str,
    calm: list[str],
    drift: list[str],
    *,
    rate: float,
    duration: float,
    drift_after: float | None = None,
    api_key: str | None = None,
    max_tokens: int = 32,
    seed: int = 0,
) -> Replayed:
    """Send the traffic; returns what was sent and answered."""
    if rate <= 0 or duration <= 0:
        raise EvalkitError("--rate and --duration must be positive")
    if not calm or (drift_after is not None and not drift):
        raise EvalkitError("replay needs calm prompts, and drift prompts for a drift episode")
    url = url.rstrip("/")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    model = _model(url, headers)
    rng = random.Random(seed)
    done = Replayed()
    lock = threading.Lock()

    def send(prompt: str, number: int) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": seed + number,
        }
        request = urllib.request.Request(
            f"{url}/v1/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
            outcome = None
        except urllib.error.HTTPError as exc:
            outcome = str(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            outcome = type(exc).__name__
        with lock:
            if outcome is None:
                done.answered += 1
            else:
                done.failed[outcome] = done.failed.get(outcome, 0) + 1

    start = time.time()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for number in range(int(rate * duration)):
            at = start + number / rate
            time.sleep(max(0.0, at - time.time()))
            drifting = drift_after is not None and at - start >= drift_after
            if drifting and done.drift_started is None:
                done.drift_started = time.time()
            pool.submit(send, rng.choice(drift if drifting else calm), number)
            done.sent += 1
    return done
