"""Perplexity throughput: evalkit's text perplexity against lm-evaluation-harness, same model.

Both score the same chit-chat texts (one text per exchange: a turn and its reply, from one JSONL
file) with the same definition (lm-eval's ``loglikelihood_rolling``), on the CPU in float32,
and must agree on word perplexity within 1e-4 relative. Reported:

- in-process tokens/s, model loading included: evalkit's ``load_model`` + ``text_nll``, and
  lm-eval's ``simple_evaluate`` (its task index built beforehand, not timed) at each batch size
  tried, its best one kept for the ratio;
- whole-process wall time of each as a subprocess: ``lm_eval --model hf ... --include_path``
  (its CLI, at its best batch size) and ``python -m evalkit.perplexity MODEL TEXTS``.

Each figure is the fastest of ``--repeat`` runs, after one lm-eval warm-up run (imports, the
datasets cache of the JSONL, which the CLI runs then reuse). The in-process ratio is then measured
again in ``--pairs`` back-to-back pairs (evalkit and lm-eval at its best batch size, the order
alternating), and their median ratio reported with the range: a VM's speed drifts by 5-10% over
the minutes between the fastest runs of each, not within a pair. The pairs are run again with
lm-eval at its default batch size (1), as a user who sets none runs it. ``--threads N`` pins
both to N torch threads, in and out of process.

    .venv/bin/pip install -e ".[dev]"
    .venv/bin/python benchmarks/bench_perplexity.py [--workspace DIR] [--size micro] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

from summary import emit, size

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# The task, shared with the parity test; its file name is the task's name.
TASK_YAML = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval" / "evalkit_ppl.yaml"
TASK = TASK_YAML.stem
LM_EVAL_DEFAULT_BATCH_SIZE = 1  # lm_eval's --batch_size when none is given


def chitchat_texts(n: int) -> list[str]:
    """The first ``n`` exchanges of the chit-chat corpus: a turn and its reply, one text."""
    from finetune.data.corpora import load_chitchat

    texts = []
    for conversation in load_chitchat():
        turns = [m["content"] for m in conversation["messages"]]
        texts.extend("\n".join(turns[i : i + 2]) for i in range(0, len(turns), 2))
    if len(texts) < n:
        raise SystemExit(f"the corpus has only {len(texts)} exchanges")
    return texts[:n]


def run_evalkit(model_dir: Path, data: Path, batch_size: int) -> tuple[float, int, float]:
    """Word perplexity, scored tokens and seconds: reading the texts, loading, scoring."""
    from evalkit.models import load_model
    from evalkit.perplexity import text_nll, word_perplexity

    start = time.perf_counter()
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    model, tokenizer = load_model(model_dir, device="cpu", require_chat_template=False)
    scores = text_nll(model, tokenizer, texts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    ppl = word_perplexity([s.nll for s in scores], [s.words for s in scores])
    return ppl, sum(s.tokens for s in scores), seconds


def run_lm_eval(model_dir: Path, task_manager, batch_size: int) -> tuple[float, float]:
    """Word perplexity and seconds of one ``simple_evaluate`` (model loading included)."""
    import lm_eval

    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": "float32"},
        tasks=[TASK],
        task_manager=task_manager,
        device="cpu",
        batch_size=batch_size,
        log_samples=False,
        bootstrap_iters=0,
    )
    seconds = time.perf_counter() - start
    return results["results"][TASK]["word_perplexity,none"], seconds


def paired_ratios(ours, theirs, pairs: int) -> list[float]:
    """lm-eval's seconds over evalkit's in back-to-back pairs, the order alternating."""
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            ours_s, theirs_s = ours(), theirs()
        else:
            theirs_s, ours_s = theirs(), ours()
        ratios.append(theirs_s / ours_s)
    return ratios


def wall_time(command: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds of a whole subprocess, and its standard output."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{command[0]} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace",
        default=os.environ.get("EVALKIT_WORKSPACE") or Path.home() / ".cache" / "evalkit-bench",
        help="where the base model is built once and cached (default: ~/.cache/evalkit-bench)",
    )
    parser.add_argument("--size", default=size("default", "micro"), choices=["default", "micro"])
    parser.add_argument(
        "--texts", type=int, default=size(2000, 200), help="chit-chat exchanges to score"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="evalkit's (its default)")
    parser.add_argument("--threads", type=int, help="torch threads of both, in and out of process")
    parser.add_argument(
        "--lm-eval-batch-sizes", default=size("1,2,4,8,16", "16"), help="lm-eval's to try"
    )
    parser.add_argument(
        "--repeat", type=int, default=size(2, 1), help="runs of each; the fastest counts"
    )
    parser.add_argument(
        "--pairs", type=int, default=size(7, 1), help="back-to-back evalkit/lm-eval pairs"
    )
    args = parser.parse_args()

    import lm_eval.evaluator
    import torch
    from lm_eval.tasks import TaskManager

    from evalkit.workspace import open_workspace
    from finetune.base_model import build_base_model, read_metadata

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    # lm-eval records the git commit of its working directory: not ours to read.
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    model_dir = build_base_model(open_workspace(args.workspace), args.size)
    params = read_metadata(model_dir)["parameters"]
    texts = chitchat_texts(args.texts)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "texts.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        tasks = tmp / "tasks"
        tasks.mkdir()
        task = Template(TASK_YAML.read_text()).substitute(data=data, cache=tmp / "hf-datasets")
        (tasks / TASK_YAML.name).write_text(task)
        task_manager = TaskManager(include_path=str(tasks), include_defaults=False)
        run_lm_eval(model_dir, task_manager, 8)  # warm-up: imports, the datasets cache

        ours = [run_evalkit(model_dir, data, args.batch_size) for _ in range(args.repeat)]
        ours_ppl, tokens = ours[0][:2]
        ours_s = min(seconds for _, _, seconds in ours)
        theirs = {}
        for bs in map(int, args.lm_eval_batch_sizes.split(",")):
            runs = [run_lm_eval(model_dir, task_manager, bs) for _ in range(args.repeat)]
            theirs[bs] = (runs[0][0], min(seconds for _, seconds in runs))
            print(f"lm-eval batch size {bs}: {tokens / theirs[bs][1]:,.0f} tokens/s", flush=True)
        best = min(theirs, key=lambda bs: theirs[bs][1])
        theirs_ppl, theirs_s = theirs[best]
        paired = {
            bs: paired_ratios(
                lambda: run_evalkit(model_dir, data, args.batch_size)[2],
                lambda bs=bs: run_lm_eval(model_dir, task_manager, bs)[1],
                args.pairs,
            )
            for bs in dict.fromkeys([best, LM_EVAL_DEFAULT_BATCH_SIZE])
            if bs in theirs and args.pairs > 0
        }

        evalkit_cli = [sys.executable, "-m", "evalkit.perplexity", str(model_dir), str(data)]
        evalkit_cli += ["--batch-size", str(args.batch_size), "--device", "cpu"]
        lm_eval_cli = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf"]
        lm_eval_cli += ["--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", TASK]
        lm_eval_cli += ["--include_path", str(tasks), "--device", "cpu", "--batch_size", str(best)]
        ours_walls, theirs_walls = [], []
        for _ in range(args.repeat):
            seconds, out = wall_time(evalkit_cli, tmp)
            ours_walls.append(seconds)
            theirs_walls.append(wall_time(lm_eval_cli, tmp)[0])
        sub_ppl = json.loads(out.splitlines()[-1])["word_perplexity"]
        ours_wall, theirs_wall = min(ours_walls), min(theirs_walls)

    rel = abs(ours_ppl - theirs_ppl) / theirs_ppl
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(
        f"model: {model_dir.name}, {params:,} parameters; {len(texts):,} texts, {tokens:,} tokens; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"fastest of {args.repeat} runs each"
    )
    print(f"word perplexity: evalkit {ours_ppl:.6f}, lm-eval {theirs_ppl:.6f} (diff {rel:.1e})")
    print(f"{'in process':<36}{'seconds':>9}{'tokens/s':>11}")
    rows = [(f"evalkit load + text_nll, batch {args.batch_size}", ours_s)]
    rows += [(f"lm-eval simple_evaluate, batch {bs}", s) for bs, (_, s) in theirs.items()]
    for name, seconds in rows:
        print(f"{name:<36}{seconds:>9.2f}{tokens / seconds:>11,.0f}")
    print(f"tokens/s ratio evalkit / lm-eval (batch {best}): {theirs_s / ours_s:.2f}x")
    for bs, ratios in paired.items():
        which = "best" if bs == best else "default"
        print(
            f"in {len(ratios)} back-to-back pairs against lm-eval's {which} batch size ({bs}): "
            f"median {statistics.median(ratios):.2f}x "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}x)"
        )
    print(f"{'whole process (subprocess)':<36}{'seconds':>9}")
    print(f"{'python -m evalkit.perplexity':<36}{ours_wall:>9.2f}")
    print(f"{f'lm_eval CLI, batch {best}':<36}{theirs_wall:>9.2f}")
    print(f"wall-time ratio lm-eval / evalkit: {theirs_wall / ours_wall:.2f}x")
    emit(
        "perplexity",
        "tokens/s in process, loading included",
        f"{tokens / ours_s:,.0f} tokens/s",
        f"lm-eval simple_evaluate (batch {best})",
        f"{tokens / theirs_s:,.0f} tokens/s",
        theirs_s / ours_s,
        rel <= 1e-4,
    )
    if rel > 1e-4 or abs(sub_ppl - ours_ppl) / ours_ppl > 1e-6:
        raise SystemExit("the word perplexities differ: the comparison is void")


if __name__ == "__main__":
    main()
