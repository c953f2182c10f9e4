"""Serving throughput: `evalkit serve` against `transformers serve`, same model, same machine.

Held-out support questions (fixtures/support_faq.jsonl), greedy, at most 64 new tokens,
streamed (so time to first token is measured) by 1, 8 and 32 concurrent clients: over aiohttp
by default, as vLLM's serving benchmark sends them, or through the official ``openai`` async
client (``--client openai``), whose own CPU time a token, on a machine of two cores, bounds
what a server can be measured at. Prints generated tokens/s, p50/p99 end-to-end latency and
time to first token for each server and concurrency (the median of ``--rounds`` rounds: a round
of 64 answers lasts about half a second at 32 clients, which one pause of the machine can
halve), the ratios, and the offline ceiling: what ``evalkit.generation`` decodes in batches of
32 on the same prompts.

    .venv/bin/python benchmarks/bench_serve.py [--requests 64] [--clients 1,8,32]
        [--rounds 5] [--client aiohttp|openai]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from summary import emit, quick, size

from evalkit.workspace import open_workspace
from finetune.base_model import build_base_model
from finetune.data.corpora import load_support_faq
from monitor.stack import Background, free_port

MAX_TOKENS = size(64, 16)  # the micro model of QUICK=1 has a context of 64
REQUEST = {
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
    "stream_options": {"include_usage": True},
}


async def stream_openai(base: str, model: str, clients: int):
    """The official ``openai`` async client: a function that streams one request and yields
    (completion text, completion tokens or None) per chunk."""
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)

    async def one(messages: list[dict]):
        stream = await client.chat.completions.create(
            model=model, messages=messages, stream=True, **REQUEST
        )
        async for chunk in stream:
            text = chunk.choices[0].delta.content if chunk.choices else None
            yield text, chunk.usage.completion_tokens if chunk.usage else None

    return one, client.close


async def stream_aiohttp(base: str, model: str, clients: int):
    """The same requests over aiohttp, reading the SSE lines with ``json.loads`` (as vLLM's
    ``benchmark_serving`` does): a client that costs a fraction of the CPU, so that a machine
    of few cores measures the server rather than the client."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(600)
    )
    url = f"{base}/chat/completions"

    async def one(messages: list[dict]):
        body = {"model": model, "messages": messages, "stream": True, **REQUEST}
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                usage = chunk.get("usage")
                yield text, usage["completion_tokens"] if usage else None

    return one, session.close


CLIENTS = {"openai": stream_openai, "aiohttp": stream_aiohttp}


async def drive(
    base: str, model: str, prompts: list[list[dict]], clients: int, kind: str = "aiohttp"
) -> dict:
    """Every prompt once, ``clients`` at a time, streamed; per-request latency and TTFT."""
    one, close = await CLIENTS[kind](base, model, clients)
    todo = list(prompts)
    latencies, ttfts, tokens = [], [], 0

    async def worker() -> None:
        nonlocal tokens
        while todo:
            messages = todo.pop()
            started = time.perf_counter()
            first = None
            async for text, completion_tokens in one(messages):
                if first is None and text:
                    first = time.perf_counter()
                if completion_tokens:
                    tokens += completion_tokens
            end = time.perf_counter()
            latencies.append(end - started)
            ttfts.append((first or end) - started)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    await close()
    q = statistics.quantiles
    return {
        "tokens_per_s": tokens / wall,
        "p50": statistics.median(latencies),
        "p99": q(latencies, n=100)[98] if len(latencies) > 1 else latencies[0],
        "ttft_p50": statistics.median(ttfts),
        "ttft_p99": q(ttfts, n=100)[98] if len(ttfts) > 1 else ttfts[0],
        "tokens": tokens,
        # the client's own CPU time a token (one streamed chunk each): on a machine of few
        # cores it bounds what any server can be measured at
        "client_ms_per_token": 1000 * cpu / max(tokens, 1),
    }


def offline_ceiling(model_dir: Path, prompts: list[list[dict]]) -> float:
    from evalkit.generation import DecodingConfig, generate
    from evalkit.models import load_model

    model, tokenizer = load_model(model_dir)
    config = DecodingConfig(max_new_tokens=MAX_TOKENS)
    generate(model, tokenizer, prompts[:4], config)  # warm-up
    started = time.perf_counter()
    out = generate(model, tokenizer, prompts, config, batch_size=32)
    return sum(g.tokens for g in out) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=str(Path.home() / ".cache" / "evalkit-bench"))
    parser.add_argument("--requests", type=int, default=size(64, 16))
    parser.add_argument("--clients", default=size("1,8,32", "1,8"))
    parser.add_argument(
        "--rounds",
        type=int,
        default=size(5, 1),
        help="times the prompts are sent at each concurrency; the median round is reported",
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="aiohttp",
        help="what sends the requests: aiohttp (light, as vLLM's benchmark) or the openai client",
    )
    parser.add_argument(
        "--peer-modes",
        default=size("plain,continuous", "continuous"),
        help="transformers serve modes",
    )
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    model_dir = build_base_model(open_workspace(args.workspace), size("default", "micro"))
    faq = load_support_faq()
    questions = [r["messages"][:-1] for r in faq]  # answers held out
    if quick():  # the shortest: the micro model of QUICK=1 has a context of 64 tokens
        prompts = sorted(questions, key=lambda m: len(m[-1]["content"]))[: args.requests]
    else:
        prompts = questions[-args.requests :]

    servers = {}
    port = free_port()
    evalkit_cmd = [sys.executable, "-m", "evalkit.cli", "--workspace", args.workspace, "serve"]
    evalkit_cmd += ["--model", str(model_dir), "--name", "bench", "--port", str(port)]
    servers["evalkit serve"] = (evalkit_cmd, port, "bench", "/healthz")
    peer = str(Path(sys.executable).with_name("transformers"))
    for mode in args.peer_modes.split(","):
        port = free_port()
        command = [peer, "serve", str(model_dir), "--port", str(port), "--host", "127.0.0.1"]
        if mode == "continuous":
            command.append("--continuous-batching")
        servers[f"transformers serve ({mode})"] = (command, port, str(model_dir), "/health")

    results = {}
    with tempfile.TemporaryDirectory() as logs:  # each server's output, shown if it fails
        for i, (name, (command, port, model, health)) in enumerate(servers.items()):
            log = Path(logs) / f"server-{i}.log"
            server = Background.start(name, command, log, f"http://127.0.0.1:{port}{health}", 300)
            try:
                base = f"http://127.0.0.1:{port}/v1"
                asyncio.run(drive(base, model, prompts[:4], 2, args.client))  # warm-up
                for n in clients:
                    rounds = [
                        asyncio.run(drive(base, model, prompts, n, args.client))
                        for _ in range(args.rounds)
                    ]
                    rounds.sort(key=lambda r: r["tokens_per_s"])
                    r = results[name, n] = rounds[len(rounds) // 2]  # the median round
                    each = " / ".join(f"{x['tokens_per_s']:,.0f}" for x in rounds)
                    print(
                        f"{name:<34} {n:>3} clients: {r['tokens_per_s']:>8,.0f} tokens/s  "
                        f"p50 {r['p50']:.3f} s  p99 {r['p99']:.3f} s  "
                        f"TTFT p50 {r['ttft_p50']:.3f} s  p99 {r['ttft_p99']:.3f} s  "
                        f"client CPU {r['client_ms_per_token']:.3f} ms/token  (rounds: {each})",
                        flush=True,
                    )
            finally:
                server.stop()
    ceiling = offline_ceiling(model_dir, prompts)
    print(f"offline evalkit.generation, batches of 32: {ceiling:,.0f} tokens/s")
    top = max(clients)
    for n in clients:
        ours = results["evalkit serve", n]["tokens_per_s"]
        peers = {k[0]: v["tokens_per_s"] for k, v in results.items() if k[1] == n}
        del peers["evalkit serve"]
        if peers:
            best = max(peers, key=peers.get)
            print(f"{n} clients: evalkit / {best}: {ours / peers[best]:.2f}x")
            if n == max(clients):
                ratio = ours / peers[best]
                theirs = f"{peers[best]:,.0f} tokens/s"
                emit("serve", f"{n} clients", f"{ours:,.0f} tokens/s", best, theirs, ratio, None)
    share = results["evalkit serve", top]["tokens_per_s"] / ceiling
    print(f"{top} clients: evalkit serve at {share:.0%} of the offline ceiling")


if __name__ == "__main__":
    main()
