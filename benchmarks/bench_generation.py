"""Batched generation against one prompt at a time: generated tokens per second.

The same prompts (user turns of the support FAQ and the topic corpus) go through
`evalkit.generation.generate` with greedy decoding, repetition penalty 1.3 and no-repeat
3-grams, 48 new tokens at most, once with batch size 1 and once batched (left padding, KV
cache). Both produce the same responses (checked); target: batched at least 4x batch size 1.

    python benchmarks/bench_generation.py [--base MODEL_DIR] [--prompts 128] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

from evalkit.generation import DecodingConfig, generate
from evalkit.models import load_model
from evalkit.workspace import open_workspace
from finetune.base_model import build_base_model
from finetune.data.corpora import load_support_faq, load_topics


def prompts(n: int) -> list[list[dict]]:
    conversations = load_support_faq() + load_topics()
    users = [c["messages"][0] for c in conversations if c["messages"][0]["role"] == "user"]
    return [[m] for m in users[::3][:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="model directory (default: the embedded base model)")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    base = args.base or build_base_model(open_workspace(), "default")
    model, tokenizer = load_model(base, device="cpu")
    config = DecodingConfig(max_new_tokens=48, repetition_penalty=1.3, no_repeat_ngram_size=3)
    todo = prompts(args.prompts)
    generate(model, tokenizer, todo[:4], config, batch_size=4)  # warm up
    rates, outputs = {}, {}
    for batch_size in (1, args.batch_size):
        started = time.perf_counter()
        outputs[batch_size] = generate(model, tokenizer, todo, config, batch_size=batch_size)
        elapsed = time.perf_counter() - started
        tokens = sum(g.tokens for g in outputs[batch_size])
        rates[batch_size] = tokens / elapsed
        print(f"batch size {batch_size:>3}: {tokens:,} tokens in {elapsed:.1f} s, "
              f"{rates[batch_size]:,.0f} tokens/s")  # fmt: skip
    same = sum(a.text == b.text for a, b in zip(outputs[1], outputs[args.batch_size]))
    print(f"same responses: {same} of {len(todo)}")
    print(f"batched / one at a time: {rates[args.batch_size] / rates[1]:.1f}x (target 4x)")


if __name__ == "__main__":
    main()
