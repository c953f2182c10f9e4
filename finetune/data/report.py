"""``report.md``: the manifest of a dataset directory as a page a person reads."""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.errors import EvalkitError


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def render_report(manifest: dict) -> str:
    """Markdown: counts, inputs, stages, drops by reason, PII, classes, contamination, tokens."""
    counts = manifest["counts"]
    out = [
        "# Dataset report",
        "",
        f"Dataset hash `{manifest.get('dataset_hash', '')[:16]}`: {counts['read']:,} records read, "
        f"{counts['train']:,} train / {counts['validation']:,} validation / "
        f"{counts['test']:,} test, {counts['dropped']:,} dropped "
        f"(each in `dropped.jsonl` with its file, line and reason)"
        + (
            f", {counts['upsampled']:,} training copies from upsampling."
            if counts["upsampled"]
            else "."
        ),
        "",
        "## Inputs",
        "",
    ]
    out += _table(
        ["file", "source", "read", "kept", "dropped", "sha256"],
        [
            [f["path"], f["source"], f["read"], f["kept"], f["dropped"], f["sha256"][:12]]
            for f in manifest["inputs"]
        ],
    )
    out += ["## Stages", ""]
    out += _table(
        ["stage", "in", "out", "dropped by reason", "seconds"],
        [
            [
                s["stage"],
                s["in"],
                s["out"],
                ", ".join(f"{r}: {n}" for r, n in s["dropped"].items()) or "-",
                s["seconds"],
            ]
            for s in manifest["stages"]
        ],
    )
    if manifest["pii"]:
        out += ["## PII replaced", ""]
        out += _table(["type", "count"], sorted(manifest["pii"].items()))
    classes = manifest["classes"]
    if classes["field"]:
        out += [f"## Classes by `{classes['field']}`", ""]
        labels = sorted(set(classes["before"]) | set(classes["after"]))
        out += _table(
            ["class", "before balancing", "after (all splits)"],
            [[c, classes["before"].get(c, 0), classes["after"].get(c, 0)] for c in labels],
        )
    if manifest["contamination"]:
        ngram = manifest["options"]["ngram"]
        out += [f"## Contamination ({ngram}-gram overlap with train)", ""]
        out += _table(
            ["evaluation set", "examples", "contaminated", "train records overlapping"],
            [
                [name, c["examples"], c["examples_contaminated"], c["train_records_overlapping"]]
                for name, c in manifest["contamination"].items()
            ],
        )
    if manifest["tokens"]:
        max_length = manifest["options"]["max_length"]
        out += [
            "## Tokens (chat template applied)",
            "",
            f"Over {max_length}: longer than training takes (the model's context unless "
            "--max-length was given); `finetune train` leaves them out unless --truncate.",
            "",
        ]
        out += _table(
            [
                "split",
                "records",
                "tokens",
                "mean",
                "p50",
                "p90",
                "p99",
                "max",
                f"over {max_length}",
            ],
            [
                [
                    split,
                    t["count"],
                    t.get("total", 0),
                    t.get("mean", "-"),
                    t.get("p50", "-"),
                    t.get("p90", "-"),
                    t.get("p99", "-"),
                    t.get("max", "-"),
                    t.get("truncated", 0),
                ]
                for split, t in manifest["tokens"].items()
            ],
        )
    return "\n".join(out)


def dataset_summary(path) -> str:
    """The report of a dataset directory, after checking its split files against the manifest."""
    from finetune.data.manifest import modified_files, split_hashes

    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise EvalkitError(
            f"{path} is not a dataset directory: cannot read manifest.json ({exc})",
            hint="pass a directory written by `evalkit data prepare`",
        ) from exc
    changed = modified_files(manifest, split_hashes(path))
    report = render_report(manifest)
    if changed:  # first, where it is seen: training refuses these files
        report = (
            f"WARNING: {', '.join(changed)} changed since preparation; the numbers below "
            "describe the files as prepared, and training refuses them (--allow-modified)\n\n"
            + report
        )
    return report
