"""Log the exchanges of a model served elsewhere (vLLM, TGI, a hosted API) with one call.

>>> from monitor.client import EventClient
>>> events = EventClient("http://127.0.0.1:8000")  # or EventClient(events_dir=...)
>>> events.log(prompt=messages, response=text, model="support-v1", latency_s=0.42)

``log`` only puts the event on a queue: the caller never waits for the network. A background
thread sends the queue to ``/v1/events`` in batches (or writes the event log directly) and
flushes at exit. Nothing is dropped silently: ``sent``, ``failed`` (the server refused or could
not be reached after retries) and ``dropped`` (the queue was full, or the client closed)
count every event. A batch over the server's body limit is sent in halves.
"""

from __future__ import annotations

import atexit
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

import orjson

from monitor.events import EventLog, make_event


class EventClient:
    """Batches events in the background to a server's ``/v1/events`` or to a log folder."""

    def __init__(
        self,
        url: str | None = None,
        *,
        events_dir: str | Path | None = None,
        api_key: str | None = None,
        max_batch: int = 1000,  # large batches: a request's cost is shared by more events
        max_wait_s: float = 1.0,
        max_queue: int = 100_000,
        retries: int = 3,
    ):
        if (url is None) == (events_dir is None):
            raise ValueError("give a server url or an events_dir, one of the two")
        self.url = url.rstrip("/") + "/v1/events" if url else None
        self.api_key, self.max_batch, self.max_wait_s = api_key, max_batch, max_wait_s
        self.max_queue, self.retries = max_queue, retries
        self.sent = self.failed = self.dropped = 0
        self._log = EventLog(events_dir) if events_dir is not None else None
        # A deque and an event, not a queue.Queue: appending takes no lock, and the sender
        # takes a whole batch at once instead of one event per call.
        self._queue: deque[dict] = deque()
        self._wake = threading.Event()  # a batch is full, or flush or close is waiting
        self._sending = False  # events taken from the queue are on their way
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="evalkit-events", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def log(self, **fields) -> None:
        """Queue one exchange (the event log's columns, e.g. prompt, response, model,
        latency_s); a full queue, or a closed client, drops it and counts it in ``dropped``."""
        event = make_event(**fields)
        if self._closing or len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(event)
        if len(self._queue) >= self.max_batch and not self._wake.is_set():  # set() takes a lock
            self._wake.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event is sent (or counted as failed)."""
        deadline = time.monotonic() + timeout
        while self._queue or self._sending:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Send what is queued, then stop."""
        if not self._thread.is_alive():
            return
        self._closing = True
        self._wake.set()
        self._thread.join()
        if self._log is not None:
            self._log.close()
        atexit.unregister(self.close)

    def _run(self) -> None:
        """Every ``max_wait_s``, or sooner when woken, send all that is queued, in batches."""
        while True:
            self._wake.wait(self.max_wait_s)
            self._wake.clear()
            closing = self._closing  # read after the wake: what close() queued before is sent
            while self._queue:
                self._sending = True
                batch = [
                    self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))
                ]
                self._deliver(batch)
                self._sending = False
            if closing:
                return

    def _deliver(self, batch: list[dict]) -> None:
        if self._log is not None:
            self._log.extend(batch)
            self.sent += len(batch)
            return
        try:
            body = orjson.dumps({"events": batch}, default=str)
        except orjson.JSONEncodeError:  # a field nested deeper than JSON is written here
            self.failed += len(batch)
            return
        status = self._post(body)
        if status == 413 and len(batch) > 1:  # over the server's body limit: send it in halves
            half = len(batch) // 2
            self._deliver(batch[:half])
            self._deliver(batch[half:])
        elif status is not None and status < 300:
            self.sent += len(batch)
        else:
            self.failed += len(batch)

    def _post(self, body: bytes) -> int | None:
        """The status of a POST of ``body``, retried while the server is busy or unreachable;
        None when it never answered."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        status = None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status
            except urllib.error.HTTPError as error:
                status = error.code
                if status < 500 and status != 429:  # the server refuses these events
                    return status
            except OSError:
                pass
            if attempt < self.retries:
                time.sleep(min(2**attempt * 0.1, 2.0))
        return status
