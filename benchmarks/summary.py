"""`make bench`: every comparison with a peer, then their summary table in RESULTS.md.

Each benchmark script prints its own report and, last, one machine-readable line,
``BENCH {json}`` (:func:`emit`): its headline figure, the peer's, the ratio (how many times
better this project does, whichever way the measure goes) and whether the two computed the same
values. This script runs every script in :data:`SCRIPTS`, passes their output through, collects
those lines and writes the table between the markers of ``benchmarks/RESULTS.md`` with the
date and the machine. A script that fails gets a row saying so, and the exit status is 1.

``QUICK=1`` in the environment (``make bench QUICK=1``) runs every script at its reduced sizes
(:func:`size`): a check that each comparison runs, in minutes, not figures to quote.

    QUICK=1 .venv/bin/python benchmarks/summary.py [--results FILE] [bench_metrics.py ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
# The comparisons with a peer, in the order they run; a missing script is left out.
SCRIPTS = (
    "bench_perplexity.py",  # lm-evaluation-harness
    "bench_bias.py",  # lm-evaluation-harness's loglikelihood
    "bench_train.py",  # TRL's SFTTrainer
    "bench_serve.py",  # transformers serve
    "bench_drift.py",  # Evidently
    "bench_rating.py",  # krippendorff, choix
    "bench_metrics.py",  # sacrebleu's command line
)
START, END = "<!-- bench summary: start -->", "<!-- bench summary: end -->"
COLUMNS = ("benchmark", "measure", "this project", "peer", "peer's figure", "ratio", "same values")


def quick() -> bool:
    """Whether the reduced sizes are asked for (``QUICK=1``)."""
    return os.environ.get("QUICK", "").strip() not in ("", "0")


def size(full, reduced):
    """A benchmark's size: ``reduced`` under ``QUICK=1``, else ``full``."""
    return reduced if quick() else full


def emit(bench: str, measure: str, ours: str, peer: str, theirs: str, ratio: float, same):
    """Print the ``BENCH`` line that :func:`main` collects.

    ``ours``/``theirs`` are the two figures as shown (with units); ``ratio`` how many times
    better this project does; ``same`` whether both computed the same values (True, False, or
    a short text saying what was compared; None when the values are not comparable).
    """
    line = dict(
        bench=bench, measure=measure, ours=ours, peer=peer, theirs=theirs, ratio=ratio, same=same
    )
    print("BENCH " + json.dumps(line, default=lambda x: x.item()), flush=True)  # numpy scalars


def run(script: str) -> list[dict]:
    """Run one script, its output passed through; its BENCH lines, or a row for its failure."""
    print(f"\n=== {script}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    rows = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("BENCH "):
            rows.append(json.loads(line[len("BENCH ") :]))
    if proc.wait() != 0:
        return [{"bench": script, "measure": f"failed (exit {proc.returncode})"}]
    return rows or [{"bench": script, "measure": "printed no BENCH line"}]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.2f}x"
    return str(value).replace("|", "/")


def table(rows: list[dict], when: str, where: str, reduced: bool) -> str:
    """The summary section of RESULTS.md."""
    lines = [
        START,
        "## Summary: this project against its peers (`make bench`)",
        "",
        f"{when}, {where}" + (", reduced sizes (`make bench QUICK=1`)" if reduced else "") + ".",
        "Ratio: how many times better this project does on the measure (above 1: better).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    keys = ("bench", "measure", "ours", "peer", "theirs", "ratio", "same")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return "\n".join([*lines, END])


def write_table(text: str, path: Path = RESULTS) -> None:
    """Replace the summary between the markers, or put it under the file's first paragraph."""
    content = path.read_text()
    if START in content and END in content:
        head, rest = content.split(START, 1)
        content = head + text + rest.split(END, 1)[1]
    else:
        title, sep, body = content.partition("\n\n")
        first, sep2, rest = body.partition("\n\n")
        content = f"{title}{sep}{first}{sep2}{text}\n\n{rest}"
    path.write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", help="these scripts only (default: SCRIPTS)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the file to write")
    args = parser.parse_args(argv)
    scripts = args.scripts or [s for s in SCRIPTS if (HERE / s).is_file()]
    rows = [row for script in scripts for row in run(script)]
    text = table(rows, date.today().isoformat(), machine(), quick())
    write_table(text, args.results)
    print(f"\n{text}\n\nwritten to {args.results}")
    return 1 if any("ratio" not in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
