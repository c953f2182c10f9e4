"""Log the exchanges of a model served elsewhere (vLLM, TGI, a hosted API) with one call.

>>> from monitor.client import EventClient
>>> events = EventClient("http://127.0.0.1:8000")  # or EventClient(events_dir=...)
>>> events.log(prompt=messages, response=text, model="support-v1", latency_s=0.42)

``log`` only puts the event on a queue: the caller never waits for the network. A background
thread sends the queue to ``/v1/events`` in batches (or writes the event log directly) and
flushes at exit. Nothing is dropped silently: ``sent``, ``failed`` (the server refused or could
not be reached after retries) and ``dropped`` (the queue was full) count every event.
"""

from __future__ import annotations

import atexit
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from monitor.events import EventLog, make_event


class EventClient:
    """Batches events in the background to a server's ``/v1/events`` or to a log folder."""

    def __init__(
        self,
        url: str | None = None,
        *,
        events_dir: str | Path | None = None,
        api_key: str | None = None,
        max_batch: int = 500,
        max_wait_s: float = 1.0,
        max_queue: int = 100_000,
        retries: int = 3,
    ):
        if (url is None) == (events_dir is None):
            raise ValueError("give a server url or an events_dir, one of the two")
        self.url = url.rstrip("/") + "/v1/events" if url else None
        self.api_key, self.max_batch, self.max_wait_s = api_key, max_batch, max_wait_s
        self.retries = retries
        self.sent = self.failed = self.dropped = 0
        self._log = EventLog(events_dir) if events_dir is not None else None
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=max_queue)
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evalkit-events", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def log(self, **fields) -> None:
        """Queue one exchange (the event log's columns, e.g. prompt, response, model,
        latency_s); a full queue drops it and counts it in ``dropped``."""
        event = make_event(**fields)
        try:
            self._queue.put_nowait(event)
            self._idle.clear()
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event is sent (or counted as failed)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() or not self._idle.is_set():
            if time.monotonic() > deadline:
                return False
            self._idle.wait(0.05)
        return True

    def close(self) -> None:
        """Send what is queued, then stop."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join()
        if self._log is not None:
            self._log.close()
        atexit.unregister(self.close)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._idle.set()
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if event is None:
                    stop = True
                    break
                batch.append(event)
            self._deliver(batch)
            if stop:
                self._idle.set()
                return
            if self._queue.empty():
                self._idle.set()

    def _deliver(self, batch: list[dict]) -> None:
        if self._log is not None:
            self._log.extend(batch)
            self.sent += len(batch)
            return
        body = json.dumps({"events": batch}, default=str, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30):
                    self.sent += len(batch)
                    return
            except urllib.error.HTTPError as error:
                if error.code < 500 and error.code != 429:  # the server refuses these events
                    break
            except OSError:
                pass
            time.sleep(min(2**attempt * 0.1, 2.0))
        self.failed += len(batch)
