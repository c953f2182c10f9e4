"""`evalkit lineage` on a real chain: dataset -> training -> model -> eval runs -> gate report,
served events -> rating -> the next dataset, each artifact written by its own code."""

import json
from pathlib import Path

import pytest

from evalkit.cli import main
from evalkit.lineage import build_graph, find, render, trace
from evalkit.workspace import open_workspace

GATE = """
alpha = 0.05
n_resamples = 1000
seed = 0
[[rules]]
metric = "perplexity"
task = "perplexity:t"
max_relative_increase = 0.5
"""


@pytest.fixture(scope="module")
def chain(micro_model, topics_dataset, tmp_path_factory):
    """Every link of the loop, made by the project's own functions; returns their ids."""
    from evalkit.evaluate import run_suite
    from evalkit.gate import load_spec, record_report, report_name, run_gate, write_reports
    from evalkit.provenance import model_hash
    from evalkit.rating.export import export
    from evalkit.rating.queue import add_annotator, add_items, claim_next, submit
    from evalkit.rating.rubric import Rating
    from evalkit.rating.sources import Selection, items_from_events
    from evalkit.store import open_store
    from finetune.data.prepare import PrepareConfig, prepare
    from finetune.train import TrainConfig, train
    from monitor.events import EventLog, make_event

    tmp = tmp_path_factory.mktemp("lineage")
    ws = open_workspace(tmp / "ws")
    run = train(
        TrainConfig(
            base=str(micro_model),
            data=str(topics_dataset),
            out=str(ws.runs_dir / "v1"),
            max_steps=2,
            batch_size=4,
            eval_every=2,
            save_every=2,
            warmup_steps=0,
        )
    ).run
    v1 = run / "model"

    (tmp / "texts.txt").write_text("the cat sat on the mat\nhello there\nhow are you today\n")
    suite = tmp / "suite.toml"
    suite.write_text(
        '[datasets.t]\npath = "texts.txt"\n[[tasks]]\ntype = "perplexity"\ndataset = "t"\n'
    )
    base_run = run_suite(suite, micro_model, ws.store_path, name="base").run_id
    v1_run = run_suite(suite, v1, ws.store_path, name="v1").run_id
    (tmp / "gate.toml").write_text(GATE)
    with open_store(ws.store_path) as con:
        report = run_gate(con, "base", "v1", load_spec(tmp / "gate.toml"))
        out = ws.reports_dir / report_name(report)
        write_reports(report, out)
        report_id = record_report(con, report, out)

    log = EventLog(ws.events_dir)
    questions = ["how do I reset my password", "where is the invoice", "what is pip"]
    events = [
        make_event(
            model="v1",
            model_version=model_hash(v1),
            response_id=f"resp-{i}",
            prompt=[{"role": "user", "content": q}],
            response=f"answer number {i} about {q}",
        )
        for i, q in enumerate(questions)
    ]
    for event in events:
        log.append(event)
    log.close()
    with open_store(ws.store_path) as con:
        items = items_from_events(ws.events_dir, Selection(kind="correction"), select="random")
        add_items(con, items)
        add_annotator(con, "alice")
        claimed = claim_next(con, "alice")
        rating_id = submit(
            con, "alice", claimed.item_id, Rating(corrected="Open Settings, then Reset.")
        )
        export(con, "sft", tmp / "corrections.jsonl")
        rated_event = next(i.source["event_id"] for i in items if i.item_id == claimed.item_id)
    nxt = prepare(
        [ws.events_dir, tmp / "corrections.jsonl"],
        ws.datasets_dir / "next",
        PrepareConfig(ratios=(1.0, 0.0, 0.0)),
    )
    summary = json.loads((run / "summary.json").read_text())
    return {
        "ws": ws,
        "topics": json.loads((topics_dataset / "manifest.json").read_text())["dataset_hash"],
        "run": str(run.resolve()),
        "v1": summary["model_hash"],
        "base": summary["base_model_hash"],
        "base_run": base_run,
        "v1_run": v1_run,
        "report": report_id,
        "event": rated_event,
        "item": claimed.item_id,
        "rating": rating_id,
        "next": nxt["dataset_hash"],
        "export": str(tmp / "corrections.jsonl"),
    }


def _nodes(entries: list[dict], way: str) -> list[tuple]:
    """Every (kind, id, role) of a walk, depth first."""
    out = []
    for entry in entries:
        out.append((entry["kind"], entry.get("id"), entry.get("role")))
        out += _nodes(entry.get(way, []), way)
    return out


def test_the_next_dataset_traces_back_to_the_raw_data(chain):
    graph = build_graph(chain["ws"])
    tree = trace(graph, find(graph, chain["next"]))
    assert (tree["kind"], tree["id"]) == ("dataset", chain["next"])
    back = {(kind, id) for kind, id, _ in _nodes(tree["from"], "from")}
    assert {
        ("rating", chain["rating"]),
        ("rating_item", chain["item"]),
        ("event", chain["event"]),
        ("served", chain["v1"]),
        ("model", chain["v1"]),
        ("training_run", chain["run"]),
        ("dataset", chain["topics"]),
        ("model", chain["base"]),
    } <= back
    raw_paths = {p for e in _flat(tree["from"], "from") if e["kind"] == "raw" for p in e["paths"]}
    assert chain["export"] in raw_paths  # the rating export read by data prepare
    assert any(p.endswith("topics.jsonl") for p in raw_paths)  # the raw corpus of v1's data
    assert tree["into"] == []


def _flat(entries: list[dict], way: str) -> list[dict]:
    return [x for e in entries for x in (e, *_flat(e.get(way, []), way))]


def test_a_dataset_traces_forward_to_everything_built_from_it(chain):
    graph = build_graph(chain["ws"])
    tree = trace(graph, find(graph, chain["topics"]))
    forward = _nodes(tree["into"], "into")
    ids = {(kind, id) for kind, id, _ in forward}
    assert {
        ("training_run", chain["run"]),
        ("model", chain["v1"]),
        ("eval_run", chain["v1_run"]),
        ("served", chain["v1"]),
        ("event", chain["event"]),
        ("rating", chain["rating"]),
        ("dataset", chain["next"]),
    } <= ids
    assert ("gate_report", chain["report"], "candidate") in forward
    # The base model was not built from this dataset: its run is no descendant.
    assert ("eval_run", chain["base_run"]) not in ids


def test_a_gate_report_shows_both_runs_and_their_models(chain):
    graph = build_graph(chain["ws"])
    tree = trace(graph, find(graph, chain["report"]))
    back = _nodes(tree["from"], "from")
    assert ("eval_run", chain["base_run"], "baseline") in back
    assert ("eval_run", chain["v1_run"], "candidate") in back
    assert ("model", chain["base"], None) in back


REFS = {  # what a user types -> the node it names, both from the chain
    "eval run name": (lambda c: "v1", lambda c: ("eval_run", c["v1_run"])),
    "eval run id": (lambda c: c["base_run"], lambda c: ("eval_run", c["base_run"])),
    "training run dir": (lambda c: c["run"], lambda c: ("training_run", c["run"])),
    "model dir": (lambda c: c["run"] + "/model", lambda c: ("model", c["v1"])),
    "model hash": (lambda c: c["v1"], lambda c: ("model", c["v1"])),  # also the served version
    "hash prefix": (lambda c: c["v1"][:10], lambda c: ("model", c["v1"])),
    "dataset hash": (lambda c: c["topics"], lambda c: ("dataset", c["topics"])),
    "gate report": (lambda c: c["report"], lambda c: ("gate_report", c["report"])),
    "event": (lambda c: c["event"], lambda c: ("event", c["event"])),
    "rating": (lambda c: c["rating"], lambda c: ("rating", c["rating"])),
}


@pytest.mark.parametrize("what", sorted(REFS))
def test_each_kind_of_id_finds_its_artifact(chain, what):
    ref, expected = (f(chain) for f in REFS[what])
    graph = build_graph(chain["ws"], also=[ref])
    assert find(graph, ref) == expected


def test_cli_tree_json_and_unknown_id(chain, capsys):
    ws = str(chain["ws"].root)
    assert main(["--workspace", ws, "lineage", chain["rating"]]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"rating {chain['rating']} by alice (a correction)")
    assert "built from:" in text and "built into:" in text and "└─ " in text
    assert f"model {chain['v1'][:12]}" in text and "(sha256 " in text
    assert main(["--workspace", ws, "lineage", chain["rating"], "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["kind"] == "rating" and tree["into"][0]["id"] == chain["next"]
    assert main(["--workspace", ws, "lineage", "no-such-thing"]) == 2
    assert "nothing in the workspace has the id 'no-such-thing'" in capsys.readouterr().err


def test_render_lists_a_limited_number_of_each_kind(chain):
    graph = build_graph(chain["ws"])
    tree = trace(graph, find(graph, chain["v1"]), limit=1)
    text = render(tree)
    assert "more eval runs" not in text  # one eval run of v1
    served = next(e for e in tree["into"] if e["kind"] == "served")
    assert served["exchanges"] == 3
    assert Path(chain["run"]).name in text
