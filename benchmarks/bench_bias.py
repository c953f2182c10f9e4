"""Bias likelihood probes: seconds to score the shipped probe set, against lm-eval's scoring.

evalkit's ``likelihood_probe`` scores every sentence pair of ``fixtures/bias_probes/probes.toml``
on the default base model (CPU, float32): as the assistant's reply (the suite default) and as
plain text. The peer is lm-evaluation-harness's ``hf`` model scoring the same sentences as
plain text with ``loglikelihood`` (empty context, as its ``crows_pairs`` task does), which gives
the whole-sentence sums only; the plain-text ``margin_sum`` must agree with its difference of
the two sums in sign on every pair. Model loading is left out of every figure. Each figure is
the fastest of ``--repeat`` runs; target: the probe set in at most 3 s.

    .venv/bin/python benchmarks/bench_bias.py [--workspace DIR] [--threads N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

from summary import emit, size

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_S = 3.0


def fastest(run, repeat: int):
    """(seconds of the fastest run, the result of the last)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace", help="where the default base model is built once (default: .evalkit)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--repeat", type=int, default=size(3, 1), help="runs of each; the fastest counts"
    )
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evalkit.bias import likelihood_probe, load_probes
    from evalkit.models import load_model
    from evalkit.workspace import open_workspace
    from finetune.base_model import build_base_model, read_metadata

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = build_base_model(open_workspace(args.workspace), size("default", "micro"))
    pairs = load_probes().pairs
    model, tokenizer = load_model(model_dir, device="cpu")
    print(
        f"{len(pairs)} pairs, base model {model_dir.name} "
        f"({read_metadata(model_dir)['parameters']:,} parameters), "
        f"{torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.2f}"
    )
    likelihood_probe(model, tokenizer, pairs[:8])  # warm up
    chat_s, _ = fastest(lambda: likelihood_probe(model, tokenizer, pairs), args.repeat)
    text_s, ours = fastest(
        lambda: likelihood_probe(model, tokenizer, pairs, prompt=None), args.repeat
    )

    peer = HFLM(pretrained=str(model_dir), device="cpu", batch_size=16, dtype="float32")
    sentences = [s for p in pairs for s in (p.stereo, p.anti)]
    requests = [
        Instance("loglikelihood", {}, ("", s), i, ("bias", i, 1)) for i, s in enumerate(sentences)
    ]
    peer_s, theirs = fastest(lambda: peer.loglikelihood(requests, disable_tqdm=True), args.repeat)
    peer_margins = [theirs[2 * k][0] - theirs[2 * k + 1][0] for k in range(len(pairs))]
    agree = sum(
        (r.scores["margin_sum"] > 0) == (m > 0) for r, m in zip(ours, peer_margins, strict=True)
    )

    print(f"evalkit, assistant's turn (the default): {chat_s:.2f} s (target {TARGET_S:.0f} s)")
    print(f"evalkit, plain text:                     {text_s:.2f} s")
    print(f"lm-eval hf loglikelihood, plain text:    {peer_s:.2f} s (sums only)")
    print(f"lm-eval / evalkit, plain text: {peer_s / text_s:.2f}x")
    print(f"sum margins of the same sign: {agree} of {len(pairs)}")
    emit(
        "bias",
        "probe set, plain text",
        f"{text_s:.2f} s",
        "lm-eval hf loglikelihood",
        f"{peer_s:.2f} s",
        peer_s / text_s,
        agree == len(pairs),
    )


if __name__ == "__main__":
    main()
