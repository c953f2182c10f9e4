"""`evalkit serve --workers 2`: two processes answer, and /metrics adds up their counters
(prometheus-client's multiprocess mode) whichever worker answers the scrape."""

import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

ROUND = 8  # concurrent requests
MAX_REQUESTS = 400


def _writers(workspace) -> set[str]:
    """The pids of the processes that wrote event files (HOST-PID-RANDOM-SEQUENCE.parquet)."""
    return {p.stem.rsplit("-", 3)[1] for p in workspace.glob("events/date=*/*.parquet")}


def _metric(text: str, name: str, **labels) -> float:
    """The sum of a metric's samples with these labels in an exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_answer_and_their_metrics_add_up(tmp_path, evalkit_serve, require_binary):
    promtool = require_binary("promtool")
    base = evalkit_serve("--workers", "2", "--flush-seconds", "0.2", workspace=tmp_path)

    def ask(i: int) -> None:  # a client of its own: a new connection each time
        with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client:
            client.chat.completions.create(
                model="micro",
                messages=[{"role": "user", "content": f"Question {i}?"}],
                max_tokens=4,
                temperature=1.0,
                seed=i,
            )

    # Which worker accepts a connection is the kernel's choice: send rounds of concurrent
    # requests until both have answered (their log files carry their pids).
    sent = 0
    while len(_writers(tmp_path)) < 2 and sent < MAX_REQUESTS:
        with ThreadPoolExecutor(ROUND) as pool:
            list(pool.map(ask, range(sent, sent + ROUND)))
        sent += ROUND
        time.sleep(0.5)  # past the log's flush age
    assert len(_writers(tmp_path)) == 2, f"one worker answered all {sent} requests"
    for _ in range(6):  # each scrape may land on either worker: all see the same sums
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert _metric(text, "evalkit_requests_total", status="200") == sent
        assert _metric(text, "evalkit_e2e_request_latency_seconds_count") == sent
        assert _metric(text, "evalkit_model_info", model_name="micro") == 1
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
