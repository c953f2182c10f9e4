"""The demo: the platform's closed loop on the embedded default, end to end, in one command.

1. build the base model (or load it from the cache);
2. prepare the support-domain dataset (the support FAQ with chit-chat mixed in), and the pool of
   other topics and chit-chat that the drift episode draws from, each with held-out test splits;
3. fine-tune v1 on the support data;
4. evaluate the base model and v1 on one suite: perplexity and BLEU/chrF (with the content
   control) on held-out support questions, and the bias probes;
5. gate v1 against the base (``fixtures/gates/default.toml``) and write the reports;
6. serve v1 (``evalkit serve`` in the background, with its drift job), scraped by a real
   Prometheus that sends alerts to a real Alertmanager where both are installed;
7. replay traffic: held-out support questions, then a drift episode of other topics and
   chit-chat; simulated users send feedback (the rule of :mod:`evalkit.rating.simulated`);
8. queue the drifted and the low-rated exchanges for rating;
9. a simulated annotator (``simulated-annotator``: a simulation, not a person) scores and
   corrects them, its corrections the reference answers of the held-out data;
10. prepare the next dataset over the event log, the corrections and v1's data, and put the
    corrected exchanges that its split holds out into the regression set;
11. fine-tune v2 from v1;
12. evaluate v1 and v2 on the support domain, the drifted topics and the regression set, and gate
    v2 against v1;
13. print the summary: what changed with intervals, whether the claims hold, where each report
    lies, the lineage of v2, and the command that opens the app.

Every artifact lands in the workspace; the demo's own files (suites, gate specs, the drift
reference, the monitoring configs and logs, ``summary.json``) in ``WORKSPACE/demo``. Everything
is seeded: a second run gives the same figures (``Summary.fingerprint``).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evalkit.workspace import Workspace, open_workspace, write_jsonl

STEPS = 13
ROOT = Path(__file__).resolve().parents[1]
GATE_SPEC = ROOT / "fixtures" / "gates" / "default.toml"
SERVED = "support-v1"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes, training and traffic of one demo run (``QUICK``: the same loop, smaller)."""

    size: str = "default"  # the base model's
    chitchat: int = 300  # chit-chat conversations mixed into v1's data: general replies kept
    drift_chitchat: int = 300  # other chit-chat conversations in the drift episode's pool
    # Prompts the episode draws from, each sent about six times: every one of them is then
    # flagged or rated low at least once whatever the windows' timing, so the corrections, and
    # every figure after them, are the same on a second run.
    drift_prompts: int = 50
    v1_epochs: float = 4.0
    v2_epochs: float = 2.0
    learning_rate: float = 1e-3
    max_new_tokens: int = 48  # evaluation's generation
    reply_tokens: int = 32  # what the replayed traffic asks for
    rate: float = 10.0  # requests per second (two busy CPU cores answer about that many)
    calm_s: float = 25.0  # support questions first: windows judged, no alert
    drift_s: float = 30.0  # the episode at least, and on until the alert: ~6 sends a prompt
    window_events: int = 50  # the drift job's window (50: the least a feature is judged on)
    # A pass per window's worth of traffic (window_events / rate): the windows barely overlap,
    # so a chance drift in one window does not carry over into the next `hold - 1` passes.
    every_s: float = 5.0
    hold: int = 3
    n_resamples: int = 2000
    seed: int = 0


QUICK = DemoConfig(
    size="micro",
    chitchat=150,
    drift_chitchat=100,
    v1_epochs=3.0,
    v2_epochs=3.0,
    learning_rate=3e-3,
    max_new_tokens=16,
    reply_tokens=16,
    calm_s=15.0,
    drift_s=25.0,
    n_resamples=1000,
)


@dataclass
class Summary:
    """What the run showed: the claims checked, the figures behind them, where things are."""

    claims: dict[str, bool]
    figures: dict[str, float | int | str | None]
    reports: dict[str, str]  # gate -> the folder of its report.md, .html and .json
    alerting: str  # with a real Prometheus and Alertmanager, or without (and why)
    seconds: dict[str, float] = field(default_factory=dict)  # per step

    @property
    def fingerprint(self) -> str:
        """A hash of the figures that do not depend on timing: equal on a second run."""
        stable = {k: v for k, v in self.figures.items() if not k.startswith("drift_")}
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self) | {"fingerprint": self.fingerprint}


class Progress:
    """One line per step with its time (bars of the libraries show on a terminal only)."""

    def __init__(self) -> None:
        self.number = 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, title: str):
        self.number += 1
        started = time.perf_counter()
        print(f"\n[{self.number:>2}/{STEPS}] {title}", flush=True)
        yield
        seconds = time.perf_counter() - started
        self.seconds[title] = round(seconds, 1)
        print(f"[{self.number:>2}/{STEPS}] done in {seconds:.1f} s", flush=True)


def _say(line: str) -> None:
    print(f"        {line}", flush=True)


def _fresh(path: Path) -> Path:
    """The demo's own folder ``path``, emptied of a previous demo run."""
    if path.exists():
        shutil.rmtree(path)
    return path


# --- 1-2: the base model and the data ----------------------------------------------------------


def build_base(ws: Workspace, config: DemoConfig) -> Path:
    from finetune.base_model import build_base_model, summary

    model = build_base_model(ws, config.size)
    _say(summary(model).replace("\n", "\n        "))
    return model


@dataclass
class Data:
    """The prepared datasets and what the traffic and the simulation know."""

    support: Path  # the support FAQ, split: its test split is the held-out support questions
    v1: Path  # v1's training data (its train and validation splits)
    drift: Path  # the drift episode's pool: traffic from its train split, the rest held out
    eval_support: Path  # held-out support conversations (evaluation sets)
    eval_topics: Path  # held-out topic conversations never sent as traffic
    calm: list[str]  # traffic prompts: the support questions
    drift_prompts: list[str]  # topics and chit-chat, none of them held out for evaluation
    references: dict[str, str]  # prompt -> reference answer (what the simulation knows)
    reference_events: Path  # the drift job's reference: the support questions as traffic


def _first_exchange(record: dict) -> tuple[str, str] | None:
    messages = record["messages"]
    if len(messages) >= 2 and messages[0]["role"] == "user" and messages[1]["role"] == "assistant":
        return messages[0]["content"], messages[1]["content"]
    return None


def _fitting(model: Path, pairs: list[tuple[str, str]], reply_tokens: int) -> list[tuple]:
    """The (prompt, answer) pairs whose prompt leaves room for a reply in the model's context
    (the server refuses longer ones), first occurrence of each prompt."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    context = AutoConfig.from_pretrained(model).max_position_embeddings
    seen, kept = set(), []
    for prompt, answer in pairs:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        if prompt not in seen and len(ids) + reply_tokens <= context:
            seen.add(prompt)
            kept.append((prompt, answer))
    return kept


def _pairs(*files: Path) -> list[tuple[str, str]]:
    from finetune.data.corpora import read_jsonl

    return [p for f in files for p in map(_first_exchange, read_jsonl(f)) if p]


def _reference_events(pairs: list[tuple[str, str]], path: Path) -> Path:
    """An events file (as ``monitor import`` reads it) of the support questions, each once:
    the traffic the drift job compares each window with. It stands in for a period of the
    log known to be normal (``log:START..END``); the calm traffic is drawn from it."""
    rows = [
        {
            "timestamp": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "model": SERVED,
            "prompt": json.dumps([{"role": "user", "content": prompt}]),
            "response": "",
        }
        for i, (prompt, _) in enumerate(pairs)
    ]
    write_jsonl(rows, path)
    return path


def prepare_data(ws: Workspace, config: DemoConfig, base: Path, folder: Path) -> Data:
    from finetune.data.corpora import load_chitchat, load_support_faq, load_topics, read_jsonl
    from finetune.data.prepare import PrepareConfig, prepare

    raw, out = ws.datasets_dir / "demo-raw", ws.datasets_dir
    chitchat = load_chitchat()
    random.Random(config.seed).shuffle(chitchat)
    sources = {
        "support": load_support_faq(),
        "chitchat": chitchat[: config.chitchat],
        "topics": load_topics(),
        "chitchat-drift": chitchat[config.chitchat : config.chitchat + config.drift_chitchat],
    }
    for name, records in sources.items():
        write_jsonl(records, raw / f"{name}.jsonl")

    def run(name: str, inputs: list[str], **options) -> Path:
        options = {"model": str(base), "seed": config.seed, **options}
        manifest = prepare(inputs, out / name, PrepareConfig(**options))
        c = manifest["counts"]
        _say(
            f"dataset {out / name}: {c['read']:,} read -> {c['train']:,} train, "
            f"{c['validation']:,} validation, {c['test']:,} test, {c['dropped']:,} dropped "
            "(reasons in its report.md)"
        )
        return out / name

    support = run("demo-support", [f"support={raw / 'support.jsonl'}"])
    eval_dir = out / "demo-eval"
    eval_support = eval_dir / "support.jsonl"
    write_jsonl(read_jsonl(support / "test.jsonl"), eval_support)
    v1 = run(
        "demo-v1",
        [
            f"support={support / 'train.jsonl'}",
            f"support={support / 'validation.jsonl'}",
            f"chitchat={raw / 'chitchat.jsonl'}",
        ],
        ratios=(0.9, 0.1, 0.0),  # its held-out questions are the support test split
        eval_sets={"support": str(eval_support)},
        drop_contaminated=True,
    )
    drift = run(
        "demo-drift", [f"topics={raw / 'topics.jsonl'}", f"chitchat={raw / 'chitchat-drift.jsonl'}"]
    )
    eval_topics = eval_dir / "topics.jsonl"
    held_out = [r for r in read_jsonl(drift / "test.jsonl") if "topic" in r]
    write_jsonl(held_out, eval_topics)

    # The calm traffic is the support questions as users ask them: all of them, so that a
    # window is a sample of the reference's own kind (a window drawn from the 30 held-out ones
    # differs from any reference by their few prompts alone, and raises false alerts).
    splits = [support / f"{split}.jsonl" for split in ("train", "validation", "test")]
    calm = _fitting(base, _pairs(*splits), config.reply_tokens)
    drifting = _fitting(
        base, _pairs(drift / "train.jsonl", drift / "validation.jsonl"), config.reply_tokens
    )
    drifting = random.Random(config.seed).sample(drifting, config.drift_prompts)
    _say(
        f"traffic: {len(calm)} support questions, then {len(drifting)} topic and chit-chat "
        f"prompts (of {len(held_out)} topic conversations held out for evaluation, none)"
    )
    return Data(
        support,
        v1,
        drift,
        eval_support,
        eval_topics,
        [p for p, _ in calm],
        [p for p, _ in drifting],
        dict(calm + drifting),
        _reference_events(calm, folder / "drift-reference.jsonl"),
    )


# --- 3-5 and 10-12: training, evaluation, gates ---------------------------------------------


def finetune(ws: Workspace, config: DemoConfig, base: Path, data: Path, name: str, epochs: float):
    from finetune.train import TrainConfig, train

    run = _fresh(ws.runs_dir / name)
    result = train(
        TrainConfig(
            base=str(base),
            data=str(data),
            out=str(run),
            epochs=epochs,
            learning_rate=config.learning_rate,
            truncate=True,  # chit-chat runs past the context: its beginning still teaches
            seed=config.seed,
        )
    )
    _say(result.describe().replace("\n", "\n        "))
    return run / "model"


def write_suite(path: Path, name: str, config: DemoConfig, datasets: dict, bias: bool) -> Path:
    """A suite over ``datasets`` (name -> file): perplexity on each, generation with BLEU/chrF
    and their content control on ``support``, and the bias probes when ``bias``."""
    lines = [f'name = "{name}"', f"seed = {config.seed}", ""]
    for dataset, file in datasets.items():
        lines += [f"[datasets.{dataset}]", f'path = "{file}"', ""]
    for dataset in datasets:
        lines += ["[[tasks]]", 'type = "perplexity"', f'dataset = "{dataset}"', ""]
    lines += [
        "[[tasks]]",
        'type = "generation"',
        'dataset = "support"',
        f"max_new_tokens = {config.max_new_tokens}",
        "repetition_penalty = 1.3",
        "no_repeat_ngram_size = 3",
        "",
    ]
    if bias:
        lines += ["[[tasks]]", 'type = "bias"', 'name = "bias"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def evaluate(ws: Workspace, suite: Path, models: dict[str, Path]) -> dict[str, str]:
    """Run the suite on each model (name -> directory); the run ids by name."""
    from evalkit.evaluate import run_suite

    runs = {}
    for name, model in models.items():
        done = run_suite(suite, model, ws.store_path, name=name)
        _say(done.describe().replace("\n", "\n        "))
        runs[name] = done.run_id
    return runs


def write_spec(path: Path, extra_tasks: list[str]) -> Path:
    """The default gate spec, with a perplexity rule on each of ``extra_tasks``."""
    text = GATE_SPEC.read_text()
    for task in extra_tasks:
        text += (
            f"\n[[rules]]  # {task}: no worse than the tolerance on support\n"
            f'metric = "perplexity"\ntask = "perplexity:{task}"\nmax_relative_increase = 0.02\n'
        )
    path.write_text(text)
    return path


def gate(ws: Workspace, baseline: str, candidate: str, spec: Path, n_resamples: int):
    """Judge, write report.md/.html/.json under the workspace's reports and keep it in the
    store; returns the report and its folder."""
    from dataclasses import replace

    from evalkit.gate import load_spec, record_report, report_name, run_gate, write_reports
    from evalkit.store import open_store

    with open_store(ws.store_path) as con:
        report = run_gate(
            con, baseline, candidate, replace(load_spec(spec), n_resamples=n_resamples)
        )
        out = ws.reports_dir / report_name(report)
        write_reports(report, out)
        record_report(con, report, out)
    for rule in report.rules:
        _say(f"{rule.verdict:<13} {rule.rule}")
    for warning in report.warnings:
        _say(f"warning: {warning}")
    _say(f"gate: {report.verdict}; reports: {out}/report.md, report.html, report.json")
    return report, out


# --- 6-7: serving, traffic, drift ------------------------------------------------------------


@dataclass
class Serving:
    url: str
    server: object  # monitor.stack.Background
    alerting: object | None  # monitor.stack.Alerting, or None without Prometheus
    note: str

    def stop(self) -> None:
        if self.alerting is not None:
            self.alerting.stop()
        self.server.stop()


def serve(ws: Workspace, config: DemoConfig, model: Path, data: Data, folder: Path) -> Serving:
    from monitor.stack import Background, free_port, missing_binaries, start_alerting

    port = free_port()
    command = [sys.executable, "-m", "evalkit.cli", "--workspace", str(ws.root), "serve"]
    command += [
        "--model", str(model), "--name", SERVED, "--port", str(port),
        "--flush-seconds", "0.2",
        "--drift-reference", f"file:{data.reference_events}",
        "--drift-features", "topic,prompt_embedding",  # what a prompt says; not the answers
        "--drift-window-events", str(config.window_events),
        "--drift-every", f"{config.every_s:g}s",
        "--drift-hold", str(config.hold),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server = Background.start("evalkit serve", command, folder / "serve.log", f"{url}/healthz", 600)
    _say(f"serving {model} as {SERVED!r} at {url} (log {folder / 'serve.log'})")
    missing = missing_binaries()
    if missing:
        note = f"without Prometheus and Alertmanager ({', '.join(missing)} not installed)"
        _say(f"{note}: the drift alerts are read from the store")
        return Serving(url, server, None, note)
    try:
        alerting = start_alerting(
            folder / "monitoring", url.removeprefix("http://"),
            drift_for_s=(config.hold - 1) * config.every_s,
        )  # fmt: skip
    except Exception:
        server.stop()
        raise
    note = (
        f"with a real Prometheus ({alerting.prometheus}) and Alertmanager ({alerting.alertmanager})"
    )
    _say(note)
    return Serving(url, server, alerting, note)


@dataclass
class Traffic:
    started: float  # Unix seconds
    drift_started: float
    ended: float
    sent: int
    answered: int
    feedback: dict[str, int]


def _post(url: str, body: dict) -> None:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def _alerted(ws: Workspace, since: float) -> bool:
    """Whether the drift job has opened an alert since ``since`` (Unix seconds)."""
    from evalkit.store import open_store

    if not ws.store_path.is_file():
        return False
    with open_store(ws.store_path, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "drift_alerts" not in tables:
            return False
        query = "SELECT count(*) FROM drift_alerts WHERE model = ? AND epoch(started_at) >= ?"
        return con.execute(query, [SERVED, since]).fetchone()[0] > 0


def send_traffic(ws: Workspace, config: DemoConfig, serving: Serving, data: Data) -> Traffic:
    """The calm traffic, then the drift episode; then simulated users' feedback."""
    from evalkit.events import query
    from evalkit.rating.simulated import prompt_key, thumbs
    from finetune.data.split import seeded_key
    from monitor.replay import replay

    def send(prompts: list[str], seconds: float, seed: int):
        return replay(
            serving.url, prompts, [], rate=config.rate, duration=seconds,
            max_tokens=config.reply_tokens, seed=seed,
        )  # fmt: skip

    # Each call returns once its requests are answered, so a slow server is sent less, not
    # queued more. The episode goes on, a pass's worth at a time, until the drift alert fires
    # (at most four times drift_s): a loaded machine judges later, never wrongly.
    started = time.time()
    done = [send(data.calm, config.calm_s, config.seed)]
    drift_started = time.time()
    while True:
        done.append(send(data.drift_prompts, config.every_s, config.seed + len(done)))
        elapsed = time.time() - drift_started
        if elapsed >= 4 * config.drift_s or (
            elapsed >= config.drift_s and _alerted(ws, drift_started)
        ):
            break
    ended = time.time()
    sent, answered = sum(d.sent for d in done), sum(d.answered for d in done)
    failed = ", ".join(f"{n} {why}" for d in done for why, n in d.failed.items()) or "none failed"
    _say(
        f"replayed {sent} requests in {ended - started:.0f} s ({ended - drift_started:.0f} s of "
        f"drift): {answered} answered, {failed}"
    )
    time.sleep(1.0)  # the server writes its log every 0.2 s
    exchanges = query(
        ws.events_dir,
        "SELECT response_id, prompt, response FROM events WHERE type = 'exchange' "
        "AND response IS NOT NULL ORDER BY response_id",
    )
    # Simulated users: a seeded third of them (by what was asked and answered) give thumbs,
    # by the simulated annotator's rule against the reference answer.
    counts = {"up": 0, "down": 0}
    for row in exchanges:
        prompt = json.loads(row["prompt"])
        reference = data.references.get(prompt_key(prompt))
        if reference is None or seeded_key(config.seed, prompt_key(prompt) + row["response"]) % 3:
            continue
        verdict = thumbs(row["response"], reference)
        _post(f"{serving.url}/v1/feedback", {"response_id": row["response_id"], "thumbs": verdict})
        counts[verdict] += 1
    _say(f"simulated users gave {counts['up']} thumbs up and {counts['down']} down")
    return Traffic(started, drift_started, ended, sent, answered, counts)


def drift_timing(traffic: Traffic, serving: Serving, config: DemoConfig) -> dict:
    """When Prometheus first had the drift alert firing (Unix seconds, None: never), and how
    many such alerts Alertmanager holds; read while the server still runs. Empty without
    Prometheus."""
    from monitor.stack import DRIFT_ALERT

    timing: dict = {}
    if serving.alerting is not None:
        deadline = time.time() + 4 * config.every_s * config.hold
        fired = None
        while fired is None and time.time() < deadline:  # the rule's `for:` after the job's
            fired = serving.alerting.firing_since(DRIFT_ALERT, traffic.started, time.time())
            time.sleep(0.5)
        timing["prometheus_fired"] = fired
        timing["alertmanager_received"] = len(serving.alerting.received(DRIFT_ALERT))
    return timing


def read_drift(ws: Workspace, traffic: Traffic) -> dict:
    """The drift job's passes and alerts from the store, timed against the episode."""
    from evalkit.store import open_store

    with open_store(ws.store_path, read_only=True) as con:
        alerts = con.execute(
            "SELECT feature, epoch(started_at) FROM drift_alerts WHERE model = ? "
            "ORDER BY started_at",
            [SERVED],
        ).fetchall()
        passes = con.execute(
            "SELECT epoch(judged_at), bool_or(drifted), max(events) FROM drift_results "
            "WHERE model = ? GROUP BY pass_id, judged_at ORDER BY judged_at",
            [SERVED],
        ).fetchall()
    calm = [p for p in passes if p[0] < traffic.drift_started]
    return {
        "alerts": [(feature, at - traffic.drift_started) for feature, at in alerts],
        "calm_passes": len(calm),
        "calm_passes_drifted": sum(1 for p in calm if p[1]),
        "episode_passes": len(passes) - len(calm),
    }


# --- 8-10: rating and the next dataset --------------------------------------------------------


def queue_for_rating(ws: Workspace, config: DemoConfig) -> dict[str, int]:
    """Each drifted and each low-rated exchange as two items: one to score, one to correct."""
    from evalkit.rating.queue import add_items
    from evalkit.rating.sources import Selection, items_from_events
    from evalkit.store import open_store

    added = {}
    with open_store(ws.store_path) as con:
        for select in ("drift", "low_feedback"):
            items = [
                item
                for kind in ("single", "correction")
                for item in items_from_events(
                    ws.events_dir, Selection(kind=kind, seed=config.seed), select=select
                )
            ]
            added[select] = add_items(con, items, batch=f"demo-{select}")
    _say(
        f"queued {added['drift']} items of drifted and {added['low_feedback']} of low-rated "
        "exchanges (each to score, and to correct)"
    )
    return added


def simulate_annotator(ws: Workspace, data: Data) -> dict[str, int]:
    from evalkit.rating.simulated import NAME, rate_queue
    from evalkit.store import open_store

    with open_store(ws.store_path) as con:
        counts = rate_queue(con, data.references)
    _say(
        f"{NAME} (a simulation, not a person: scores from the chrF of each response against "
        f"the held-out reference answer, corrections = the reference answers): "
        f"{counts['scored']} scored, {counts['corrected']} corrected, {counts['skipped']} skipped"
    )
    return counts


def next_dataset(ws: Workspace, config: DemoConfig, data: Data, v1: Path) -> Path:
    """The corrections exported (SFT), prepared with the event log and v1's data into the next
    dataset (training rows that share a 13-gram with an evaluation set dropped); the corrected
    exchanges its split holds out become the regression set. Returns the dataset."""
    from evalkit.rating.export import sft_rows
    from evalkit.rating.report import load_ratings
    from evalkit.store import open_store
    from finetune.data.corpora import read_jsonl
    from finetune.data.prepare import PrepareConfig, prepare

    with open_store(ws.store_path) as con:
        rows = sft_rows(load_ratings(con))
    for row in rows:  # a question asked again is one conversation: one split, stable ids
        row["conversation_id"] = hashlib.sha256(json.dumps(row["messages"]).encode()).hexdigest()[
            :16
        ]
    rows.sort(key=lambda r: (r["conversation_id"], r["item_id"]))
    corrections = write_jsonl(rows, ws.datasets_dir / "demo-feedback" / "corrections.jsonl")
    folder = ws.datasets_dir / "demo-v2"
    manifest = prepare(
        [  # v1's data first: a correction that repeats it is the duplicate dropped
            f"v1={data.v1 / 'train.jsonl'}",
            f"v1={data.v1 / 'validation.jsonl'}",
            f"served={ws.events_dir}",
            f"corrections={ws.datasets_dir / 'demo-feedback' / 'corrections.jsonl'}",
        ],
        folder,
        PrepareConfig(
            model=str(v1),
            seed=config.seed,
            ratios=(0.7, 0.1, 0.2),  # a fifth of the corrections held out: the regression set
            exclude={"corrected": "False"},  # an uncorrected answer is no target
            eval_sets={"support": str(data.eval_support), "topics": str(data.eval_topics)},
            drop_contaminated=True,
        ),
    )
    c = manifest["counts"]
    kept = {}
    for f in manifest["inputs"]:
        kept[f["source"]] = kept.get(f["source"], 0) + f["kept"]
    _say(
        f"dataset {folder}: {corrections} corrections, {c['read']:,} read -> {c['train']:,} "
        f"train, {c['validation']:,} validation, {c['test']:,} test (kept per input: {kept})"
    )
    regression = ws.datasets_dir / "demo-eval" / "regression.jsonl"
    held = [r for r in read_jsonl(folder / "test.jsonl") if r.get("source") == "corrections"]
    write_jsonl(held, regression)
    _say(f"regression set: {len(held)} corrected exchanges held out from training -> {regression}")
    return folder


# --- 13: the summary --------------------------------------------------------------------------

TABLE_METRICS = ("perplexity", "bleu", "chrf", "bleu_margin", "chrf_margin")


def _table(title: str, comparison) -> list[str]:
    lines = [title, f"  {'task':<22} {'metric':<12} {'before':>9} {'after':>9} {'change':>9} "
             f"{'95% CI':>22} {'p':>7}  note"]  # fmt: skip
    for m in comparison.metrics:
        if m.metric in TABLE_METRICS:
            ci = f"[{m.low:.4g}, {m.high:.4g}]"
            lines.append(
                f"  {m.task:<22} {m.metric:<12} {m.baseline:>9.4g} {m.candidate:>9.4g} "
                f"{m.difference:>+9.4g} {ci:>22} {m.p_value:>7.3g}  {m.note()}"
            )
    return lines


def _lineage(ws: Workspace, model: Path) -> str:
    from evalkit.lineage import build_graph, find, render, trace

    graph = build_graph(ws, also=[str(model)])
    return render(trace(graph, find(graph, str(model)), limit=3))


def summarize(ws: Workspace, gates: dict, drift: dict, traffic: Traffic, note: str) -> Summary:
    """The claims of the run, checked on its own figures."""
    first, second = gates["v1"][0].comparison, gates["v2"][0].comparison
    support_v1 = first.find("perplexity", "perplexity:support")
    support_v2 = second.find("perplexity", "perplexity:support")
    topics_v2 = second.find("perplexity", "perplexity:topics")
    support_rule = next(r for r in gates["v2"][0].rules if r.task == "perplexity:support")
    alerts = [at for _, at in drift["alerts"]]
    episode = traffic.ended - traffic.drift_started
    claims = {
        "v1 beats the base on held-out support (perplexity, significant)": support_v1.significant
        and support_v1.candidate_better is True,
        "the drift alert fires during the episode": any(0 <= at <= episode for at in alerts),
        "no drift alert before the episode": drift["calm_passes"] > 0
        and min(alerts, default=0) >= 0,
        "v2 beats v1 on the drifted topics (perplexity, significant)": topics_v2.significant
        and topics_v2.candidate_better is True,
        "v2 keeps support within the gate's tolerance": support_rule.verdict == "pass",
    }
    figures: dict = {}
    if "prometheus_fired" in drift:
        fired = drift["prometheus_fired"]
        claims["Prometheus fires the drift alert during the episode, not before"] = (
            fired is not None and traffic.drift_started <= fired
        )
        claims["the alert reaches Alertmanager"] = drift["alertmanager_received"] > 0
        if fired is not None:
            figures["drift_prometheus_after_onset_s"] = round(fired - traffic.drift_started, 1)
    for label, m in (
        ("v1_support", support_v1),
        ("v2_support", support_v2),
        ("v2_topics", topics_v2),
    ):
        for key, value in (
            ("before", m.baseline),
            ("after", m.candidate),
            ("low", m.low),
            ("high", m.high),
        ):
            figures[f"{label}_perplexity_{key}"] = round(value, 4)
    for metric in ("bleu", "chrf", "bleu_margin", "chrf_margin"):
        figures[f"v1_{metric}"] = round(first.find(metric).candidate, 4)
    figures["v1_gate"], figures["v2_gate"] = gates["v1"][0].verdict, gates["v2"][0].verdict
    figures["drift_alert_after_onset_s"] = round(min(alerts), 1) if alerts else None
    figures["drift_calm_passes"] = drift["calm_passes"]
    figures["drift_calm_passes_drifted"] = drift["calm_passes_drifted"]
    reports = {name: str(out) for name, (_, out) in gates.items()}
    return Summary(claims, figures, reports, note)


def _learned(figures: dict, parameters: int) -> list[str]:
    """What the model learned, said plainly from v1's figures."""
    chrf, margin = figures["v1_chrf"], figures["v1_chrf_margin"]
    closer = (
        "its answers are no closer to their own references than to others' (a margin under one "
        "chrF point): it does not learn to answer these questions"
        if abs(margin) < 1
        else f"its answers are {'closer to' if margin > 0 else 'further from'} their own "
        "references than to others'"
    )
    return [
        f"What a model of {parameters:,} parameters learns here: v1's chrF on held-out answers is "
        f"{chrf:.1f} (BLEU {figures['v1_bleu']:.2g}), {margin:+.2f} chrF and "
        f"{figures['v1_bleu_margin']:+.2g} BLEU over the content control (the same answers "
        "scored against other questions' references). It learns the domain's vocabulary and "
        f"style (its perplexity on held-out support answers falls), but {closer}.",
    ]


def print_summary(ws: Workspace, summary: Summary, gates: dict, base: Path, v2: Path) -> None:
    from textwrap import fill

    from finetune.base_model import read_metadata

    f = summary.figures
    first, second = gates["v1"][0].comparison, gates["v2"][0].comparison
    alert = f["drift_alert_after_onset_s"]
    drift = (
        f"Drift, monitored {summary.alerting}: the first drift alert "
        + (f"{alert:+.1f} s after the episode began" if alert is not None else "never came")
        + f"; {f['drift_calm_passes']} passes over the calm traffic before it, "
        f"{f['drift_calm_passes_drifted']} of them drifted."
    )
    if "drift_prometheus_after_onset_s" in f:
        drift += (
            f" Prometheus had EvalkitDriftDetected firing "
            f"{f['drift_prometheus_after_onset_s']:+.1f} s after the episode began."
        )
    lines = ["", "=" * 100, "SUMMARY", ""]
    lines += _table("v1 against the base model (held-out support questions):", first)
    lines += ["", *_table("v2 against v1 (support, drifted topics, regression set):", second)]
    lines += ["", fill(" ".join(_learned(f, read_metadata(base)["parameters"])), 100)]
    lines += ["", fill(drift, 100), "", "Claims:"]
    lines += [f"  [{'x' if ok else ' '}] {claim}" for claim, ok in summary.claims.items()]
    lines += ["", "Reports:"]
    lines += [
        f"  gate {name}: {out}/report.md (.html, .json)" for name, out in summary.reports.items()
    ]
    lines += ["", "Lineage of v2 (`evalkit lineage`):", _lineage(ws, v2)]
    lines += [
        "",
        f"Figures fingerprint (the same on a second run): {summary.fingerprint}",
        f"Everything is in {ws.root}; open the app on it with:",
        f"  evalkit app --workspace {ws.root}",
    ]
    print("\n".join(lines), flush=True)


# --- the loop ---------------------------------------------------------------------------------


def run_demo(workspace: str | Path | None = None, *, quick: bool = False) -> Summary:
    """Run the 13 steps and print the summary; returns it (also in WORKSPACE/demo/summary.json)."""
    config = QUICK if quick else DemoConfig()
    ws = open_workspace(workspace)
    if not sys.stderr.isatty():  # a log gets the step lines, not the libraries' bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    folder = _fresh(ws.root / "demo")
    folder.mkdir()
    print(f"workspace: {ws.root}" + (" (--quick: micro sizes, short traffic)" if quick else ""))
    progress = Progress()
    with progress.step("build the base model, or load it from the cache"):
        base = build_base(ws, config)
    with progress.step("prepare the support-domain dataset and the drift episode's pool"):
        data = prepare_data(ws, config, base, folder)
    with progress.step("fine-tune v1 on the support data"):
        v1 = finetune(ws, config, base, data.v1, "demo-v1", config.v1_epochs)
    with progress.step("evaluate the base model and v1"):
        datasets = {"support": "../datasets/demo-eval/support.jsonl"}
        suite = write_suite(folder / "suite-v1.toml", "demo-v1", config, datasets, bias=True)
        first = evaluate(ws, suite, {"demo-base": base, "demo-v1": v1})
    gates = {}
    with progress.step("gate v1 against the base"):
        gates["v1"] = gate(ws, first["demo-base"], first["demo-v1"], GATE_SPEC, config.n_resamples)
    with progress.step("serve v1 with the monitor"):
        serving = serve(ws, config, v1, data, folder)
    try:
        with progress.step("replay traffic: support questions, then a drift episode"):
            traffic = send_traffic(ws, config, serving, data)
            timing = drift_timing(traffic, serving, config)
    finally:
        serving.stop()
    drift = read_drift(ws, traffic) | timing
    _say(
        f"drift alerts (store): {drift['alerts'] or 'none'} (seconds after the episode began); "
        f"{drift['calm_passes']} calm passes, {drift['calm_passes_drifted']} drifted"
    )
    with progress.step("queue the drifted and low-rated exchanges for rating"):
        queue_for_rating(ws, config)
    with progress.step("a simulated annotator rates and corrects them"):
        simulate_annotator(ws, data)
    with progress.step("build the next dataset and the regression set"):
        v2_data = next_dataset(ws, config, data, v1)
    with progress.step("fine-tune v2 from v1"):
        v2 = finetune(ws, config, v1, v2_data, "demo-v2", config.v2_epochs)
    with progress.step("evaluate v2 against v1 (support, drifted topics, regression set) and gate"):
        datasets = {
            "support": "../datasets/demo-eval/support.jsonl",
            "topics": "../datasets/demo-eval/topics.jsonl",
            "regression": "../datasets/demo-eval/regression.jsonl",
        }
        suite = write_suite(folder / "suite-v2.toml", "demo-v2", config, datasets, bias=False)
        second = evaluate(ws, suite, {"demo-v1-again": v1, "demo-v2": v2})
        spec = write_spec(folder / "gate-v2.toml", ["topics", "regression"])
        gates["v2"] = gate(ws, second["demo-v1-again"], second["demo-v2"], spec, config.n_resamples)
    with progress.step("summary"):
        summary = summarize(ws, gates, drift, traffic, serving.note)
        summary.seconds = progress.seconds
        (folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        print_summary(ws, summary, gates, base, v2)
    return summary
