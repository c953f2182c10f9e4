"""Lineage: for any artifact, what it was built from and what was built from it.

Every artifact records the ids of what it came from (DESIGN.md): a dataset's ``manifest.json``
its raw files and their hashes, a training run's ``summary.json`` and the
``evalkit_lineage.json`` beside its model the dataset and base model, an evaluation run its
model's hash, a gate report its two runs, an event the served model's hash
(``model_version``), a rating item its event or run, a rating its item, and the rows of a
dataset built from feedback their ``event_id`` and ``rating_ids``. :func:`build_graph` reads
those records from a workspace (its store, event log, datasets, runs and models, and every
directory they name) into one graph; :func:`trace` walks it both ways from one node.

>>> graph = build_graph(open_workspace())
>>> print(render(trace(graph, find(graph, "v1"))))
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.provenance import model_hash, model_lineage
from evalkit.workspace import Workspace

# The kinds of node, upstream first; also the order children are listed in.
KINDS = (
    "raw",
    "dataset",
    "training_run",
    "model",
    "eval_run",
    "gate_report",
    "served",
    "event",
    "rating_item",
    "rating",
)
# Which node an id that several nodes share means: a model's hash is also its served version's.
PREFERRED = ("model", "dataset", "eval_run", "gate_report", "training_run", "event", "rating")
MIN_PREFIX = 4  # shorter prefixes of an id match too much to mean one thing
DATASET_SPLITS = ("train", "validation", "test")
BASE_METADATA = "evalkit_base.json"  # written beside a base model by finetune.base_model

Key = tuple[str, str]  # (kind, id)


@dataclass
class Graph:
    """Nodes (their recorded details) and edges from what an artifact came from to it."""

    nodes: dict[Key, dict] = field(default_factory=dict)
    parents: dict[Key, dict[Key, str | None]] = field(default_factory=lambda: defaultdict(dict))
    children: dict[Key, dict[Key, str | None]] = field(default_factory=lambda: defaultdict(dict))
    names: dict[str, Key] = field(default_factory=dict)  # eval run names: the latest complete

    def add(self, kind: str, id: str, **details) -> Key:
        """The node ``(kind, id)``, created or completed with ``details`` (``path``: several
        paths may hold one artifact, all kept)."""
        key = (kind, str(id))
        node = self.nodes.setdefault(key, {})
        path = details.pop("path", None)
        if path is not None and str(path) not in node.setdefault("paths", []):
            node["paths"].append(str(path))
        node.update({k: v for k, v in details.items() if v is not None})
        return key

    def link(self, parent: Key, child: Key, role: str | None = None) -> None:
        """``child`` was built from ``parent`` (``role``: as what, e.g. "baseline")."""
        for key in (parent, child):
            self.nodes.setdefault(key, {})
        self.parents[child][parent] = role
        self.children[parent][child] = role


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvalkitError(f"cannot read {path}: {exc}", hint="is the artifact complete?") from exc
    return value if isinstance(value, dict) else {}


class _Builder:
    """Reads every record it is pointed at, following the paths the records name."""

    def __init__(self) -> None:
        self.graph = Graph()
        self.at: dict[Path, Key | None] = {}  # directories read, and the node each holds
        self.events: set[str] = set()  # event ids that items or datasets name
        self.later: list[tuple[Key, Key]] = []  # links to events and ratings, if they exist

    def directory(self, path: str | Path | None) -> Key | None:
        """The artifact in a directory (dataset, training run or model), read once."""
        if not path:
            return None
        path = Path(path).expanduser().resolve()
        if path in self.at:
            return self.at[path]
        self.at[path] = None
        if (path / "manifest.json").is_file():
            self.at[path] = self.dataset(path)
        elif (path / "summary.json").is_file() and (path / "config.json").is_file():
            self.at[path] = self.training_run(path)
        elif (path / "config.json").is_file():
            self.at[path] = self.model(path)
        return self.at[path]

    def dataset(self, path: Path) -> Key:
        manifest = _read_json(path / "manifest.json")
        counts = manifest.get("counts", {})
        key = self.graph.add(
            "dataset",
            manifest.get("dataset_hash") or path,
            path=path,
            counts={s: counts[s] for s in DATASET_SPLITS if s in counts} or None,
        )
        for source in manifest.get("inputs", []):
            raw = self.graph.add(
                "raw", source["sha256"], path=source["path"], source=source.get("source")
            )
            self.graph.link(raw, key)
        for split in DATASET_SPLITS:
            file = path / f"{split}.jsonl"
            lines = file.read_text(encoding="utf-8").splitlines() if file.is_file() else []
            for line in lines:
                row = json.loads(line)
                for rating_id in row.get("rating_ids") or []:
                    self.later.append((("rating", str(rating_id)), key))
                if row.get("event_id"):
                    self.events.add(str(row["event_id"]))
                    self.later.append((("event", str(row["event_id"])), key))
        return key

    def training_run(self, path: Path) -> Key:
        summary = _read_json(path / "summary.json")
        config = _read_json(path / "config.json")
        key = self.graph.add(
            "training_run",
            path,
            path=path,
            steps=summary.get("steps"),
            best_val_loss=summary.get("best_val_loss"),
            processes=summary.get("processes"),
        )
        for sub in ("model", "best"):
            self.directory(path / sub)
        if summary.get("model_hash"):
            self.graph.link(key, ("model", summary["model_hash"]))
        self._inputs(key, summary.get("dataset_hash"), config.get("data"))
        self._base(key, summary.get("base_model_hash"), config.get("base"))
        return key

    def _inputs(self, run: Key, dataset_hash: str | None, dataset_path: str | None) -> None:
        found = self.directory(dataset_path) if dataset_path else None
        dataset = found or (("dataset", dataset_hash) if dataset_hash else None)
        if dataset:
            self.graph.link(dataset, run)

    def _base(self, run: Key, base_hash: str | None, base_path: str | None) -> None:
        found = self.directory(base_path) if base_path else None
        base = found or (("model", base_hash) if base_hash else None)
        if base:
            self.graph.link(base, run, "base model")

    def model(self, path: Path) -> Key:
        base = path / BASE_METADATA
        built = _read_json(base) if base.is_file() else {}
        key = self.graph.add(
            "model",
            model_hash(path),
            path=path,
            base_model=built.get("config", {}).get("size"),
        )
        self.lineage(key, model_lineage(path))
        return key

    def lineage(self, model: Key, record: dict) -> None:
        """A model's training record (``evalkit_lineage.json``, also kept with eval runs)."""
        if not record.get("training_run"):
            return
        run = self.directory(record["training_run"]) or self.graph.add(
            "training_run", record["training_run"]
        )
        self.graph.link(run, model)
        self._inputs(run, record.get("dataset_hash"), record.get("dataset"))
        self._base(run, record.get("base_model_hash"), record.get("base_model"))

    def store(self, path: Path) -> None:
        """Evaluation runs, gate reports, rating items and ratings of the store."""
        from evalkit.store import open_store

        with open_store(path, read_only=True) as con:
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            }

            def rows(sql: str) -> list[dict]:
                result = con.execute(sql)
                names = [d[0] for d in result.description]
                return [dict(zip(names, row)) for row in result.fetchall()]

            runs = (
                rows("SELECT * FROM eval_runs ORDER BY started_at") if "eval_runs" in tables else []
            )
            reports = rows("SELECT * FROM gate_reports") if "gate_reports" in tables else []
            items = rows("SELECT * FROM rating_items") if "rating_items" in tables else []
            ratings = rows("SELECT * FROM ratings") if "ratings" in tables else []
        for run in runs:
            key = self.graph.add(
                "eval_run",
                run["run_id"],
                name=run["name"],
                suite=run["suite_name"],
                status=run["status"],
                time=str(run["started_at"])[:19],
            )
            model = self.directory(run["model_path"]) if run["model_path"] else None
            model = model if model and model[1] == run["model_hash"] else None
            model = model or self.graph.add("model", run["model_hash"])
            self.graph.link(model, key)
            self.lineage(model, json.loads(run["lineage"] or "{}"))
            if run["name"] and run["status"] == "complete":
                self.graph.names[run["name"]] = key
        for report in reports:
            key = self.graph.add(
                "gate_report",
                report["report_id"],
                path=report["path"],
                verdict=report["verdict"],
                time=str(report["created_at"])[:19],
            )
            self.graph.link(("eval_run", report["baseline_run"]), key, "baseline")
            self.graph.link(("eval_run", report["candidate_run"]), key, "candidate")
        for item in items:
            key = self.graph.add(
                "rating_item", item["item_id"], item_kind=item["kind"], batch=item["batch"]
            )
            source = json.loads(item["source"])
            if source.get("event_id"):
                self.events.add(str(source["event_id"]))
                self.later.append((("event", str(source["event_id"])), key))
            if source.get("run"):
                self.graph.link(("eval_run", source["run"]), key)
            for role in ("baseline", "candidate"):
                if source.get(role):
                    self.graph.link(("eval_run", source[role]), key, role)
        for rating in ratings:
            key = self.graph.add(
                "rating",
                rating["rating_id"],
                annotator=rating["annotator"],
                scores=json.loads(rating["scores"]) if rating["scores"] else None,
                thumbs=rating["thumbs"],
                choice=rating["choice"],
                corrected=rating["corrected"] is not None or None,
                skipped=rating["skip_reason"],
                time=str(rating["submitted_at"])[:19],
            )
            self.graph.link(("rating_item", rating["item_id"]), key)

    def event_log(self, folder: Path, wanted: Iterable[str]) -> None:
        """Each served version (with its count of exchanges), and the events that items,
        datasets or the query name; the others are counted, not listed."""
        from evalkit.events import query

        if not any(folder.glob("date=*/*.parquet")):
            return
        for row in query(
            folder,
            "SELECT model_version, count(*) AS n, min(timestamp) AS first, max(timestamp) AS last "
            "FROM events WHERE type = 'exchange' GROUP BY model_version",
        ):
            version = str(row["model_version"])
            served = self.graph.add(
                "served",
                version,
                exchanges=row["n"],
                first=str(row["first"])[:19],
                last=str(row["last"])[:19],
            )
            self.graph.link(("model", version), served)
        ids = sorted(set(wanted) | self.events)
        found = query(
            folder,
            "SELECT event_id, type, response_id, model_version, timestamp, user_feedback "
            "FROM events WHERE list_contains(?, event_id)",
            [ids],
        )
        for event in found:
            key = self.graph.add(
                "event",
                event["event_id"],
                type=event["type"],
                time=str(event["timestamp"])[:19],
                user_feedback=event["user_feedback"],
            )
            if event["model_version"]:
                self.graph.link(("served", str(event["model_version"])), key)

    def finish(self) -> Graph:
        for parent, child in self.later:  # only to events and ratings that were found
            if parent in self.graph.nodes:
                self.graph.link(parent, child)
        return self.graph


def build_graph(workspace: Workspace, also: Iterable[str] = ()) -> Graph:
    """Everything the workspace records, and the directories named in ``also``."""
    builder = _Builder()
    for folder in (workspace.datasets_dir, workspace.runs_dir, workspace.models_dir):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            builder.directory(path)
    for ref in also:
        if Path(ref).expanduser().is_dir():
            builder.directory(ref)
    if workspace.store_path.is_file():
        builder.store(workspace.store_path)
    builder.event_log(workspace.events_dir, also)
    return builder.finish()


def find(graph: Graph, ref: str) -> Key:
    """The node ``ref`` names: an id, a directory, an eval run's name, or a unique id prefix."""
    exact = [k for k in graph.nodes if k[1] == ref]
    path = Path(ref).expanduser()
    if not exact and path.exists():
        where = str(path.resolve())
        exact = [k for k, node in graph.nodes.items() if where in node.get("paths", [])]
    if not exact and ref in graph.names:
        exact = [graph.names[ref]]
    if not exact and len(ref) >= MIN_PREFIX:
        exact = [k for k in graph.nodes if k[1].startswith(ref)]
        ids = {k[1] for k in exact}
        if len(ids) > 1:
            shown = ", ".join(sorted(f"{k[0]} {k[1]}" for k in exact)[:5])
            raise EvalkitError(f"{ref!r} starts several ids ({shown})", hint="give more of it")
    if not exact:
        raise EvalkitError(
            f"nothing in the workspace has the id {ref!r}",
            hint="give a dataset hash, training run or model directory, model hash, eval run id "
            "or name, gate report id, served version, event id or rating id "
            "(`evalkit runs` lists the runs; --workspace picks the workspace)",
        )
    return min(exact, key=lambda k: PREFERRED.index(k[0]) if k[0] in PREFERRED else len(PREFERRED))


def _entry(graph: Graph, key: Key, role: str | None) -> dict:
    return {"kind": key[0], "id": key[1], **({"role": role} if role else {}), **graph.nodes[key]}


def _order(key: Key, graph: Graph) -> tuple:
    return (KINDS.index(key[0]), graph.nodes[key].get("time", ""), key[1])


def _walk(graph: Graph, key: Key, way: str, seen: set[Key], limit: int) -> list[dict]:
    edges = (graph.parents if way == "from" else graph.children).get(key, {})
    by_kind: dict[str, list[Key]] = defaultdict(list)
    for other in sorted(edges, key=lambda k: _order(k, graph)):
        by_kind[other[0]].append(other)
    out = []
    for kind, members in by_kind.items():
        for other in members[: limit or None]:
            entry = _entry(graph, other, edges[other])
            if other in seen:
                entry["repeated"] = True  # its own chain is shown above
            else:
                seen.add(other)
                entry[way] = _walk(graph, other, way, seen, limit)
            out.append(entry)
        if limit and len(members) > limit:
            out.append({"kind": kind, "more": len(members) - limit})
    return out


def trace(graph: Graph, key: Key, *, limit: int = 10) -> dict:
    """The node, the chain back to the raw inputs (``from``) and what was built from it
    (``into``), as nested dicts; at most ``limit`` nodes of a kind under each (0: all)."""
    return {
        **_entry(graph, key, None),
        "from": _walk(graph, key, "from", {key}, limit),
        "into": _walk(graph, key, "into", {key}, limit),
    }


def describe(entry: dict) -> str:
    """One line for a node of :func:`trace`."""
    kind, id = entry["kind"], entry.get("id", "")
    if "more" in entry:
        return f"... {entry['more']} more {kind.replace('_', ' ')}s"
    where = f" {entry['paths'][0]}" if entry.get("paths") else ""
    short = id[:12] if kind in ("dataset", "model", "served", "raw") else id
    text = {
        "raw": lambda: f"raw input{where} (sha256 {short})",
        "dataset": lambda: f"dataset {short}{where}" + _counts(entry.get("counts")),
        "training_run": lambda: (
            f"training run {id}"
            + (f": {entry['steps']} steps" if "steps" in entry else " (directory not found)")
        ),
        "model": lambda: (
            f"model {short}"
            + (where or " (no directory found)")
            + (f" (base model, {entry['base_model']})" if entry.get("base_model") else "")
        ),
        "eval_run": lambda: (
            f"eval run {id}"
            + (f" {entry['name']!r}" if entry.get("name") else "")
            + (
                f": suite {entry['suite']}, {entry['status']}, {entry['time']}"
                if "suite" in entry
                else ""
            )
        ),
        "gate_report": lambda: f"gate report {id}: {entry.get('verdict', '?')}{where}",
        "served": lambda: (
            f"served version {short}: {entry.get('exchanges', 0)} exchanges, "
            f"{entry.get('first', '?')} to {entry.get('last', '?')}"
        ),
        "event": lambda: (
            f"event {id} ({entry.get('type', '?')}, {entry.get('time', '?')})"
            + (
                f", feedback {entry['user_feedback']}"
                if entry.get("user_feedback") is not None
                else ""
            )
        ),
        "rating_item": lambda: f"rating item {id} ({entry.get('item_kind', '?')})",
        "rating": lambda: (
            f"rating {id} by {entry.get('annotator', '?')}"
            + (" (a correction)" if entry.get("corrected") else "")
        ),
    }[kind]()
    role = f"[{entry['role']}] " if entry.get("role") else ""
    return role + text + (" (shown above)" if entry.get("repeated") else "")


def _counts(counts: dict | None) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{n:,} {split}" for split, n in counts.items()) + ")"


def render(tree: dict) -> str:
    """The trace as a tree for the terminal: built from above, built into below."""
    lines = [describe(tree)]
    for way, title in (("from", "built from"), ("into", "built into")):
        lines.append(f"{title}:" + ("" if tree[way] else " nothing recorded"))
        _draw(tree[way], way, "  ", lines)
    return "\n".join(lines)


def _draw(entries: list[dict], way: str, indent: str, lines: list[str]) -> None:
    for i, entry in enumerate(entries):
        last = i == len(entries) - 1
        lines.append(f"{indent}{'└─' if last else '├─'} {describe(entry)}")
        _draw(entry.get(way, []), way, indent + ("   " if last else "│  "), lines)
