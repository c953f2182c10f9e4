import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalkit.cli import main
from evalkit.errors import EvalkitError
from finetune.data.prepare import PrepareConfig, prepare
from finetune.data.split import SPLITS, split_groups

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


def conv(i, *, topic=None, conversation_id=None, text=None):
    text = text or " ".join(WORDS[(i + k) % len(WORDS)] + str(i) for k in range(12))
    record = {
        "messages": [
            {"role": "user", "content": f"question {i}: {text}"},
            {"role": "assistant", "content": f"answer {i}: {text[::-1]}"},
        ],
        "id": f"c{i}",
    }
    if topic:
        record["topic"] = topic
    if conversation_id:
        record["conversation_id"] = conversation_id
    return record


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def read_split(out, split):
    return [json.loads(line) for line in (Path(out) / f"{split}.jsonl").read_text().splitlines()]


def test_every_record_is_kept_or_dropped_with_file_line_and_reason(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [conv(i) for i in range(20)])
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            conv(100),
            "{broken",
            {"messages": [{"role": "user", "content": "no reply"}]},
            {"messages": [{"role": "robot", "content": "x"}]},
            conv(100),
        ],
    )
    manifest = prepare([good, bad], tmp_path / "ds", PrepareConfig())
    files = {Path(f["path"]).name: f for f in manifest["inputs"]}
    assert files["good.jsonl"] == files["good.jsonl"] | {"read": 20, "kept": 20, "dropped": 0}
    assert files["bad.jsonl"]["read"] == 5 and files["bad.jsonl"]["kept"] == 1
    assert files["bad.jsonl"]["dropped_by_reason"] == {
        "malformed JSON": 1,
        "no assistant turn": 1,
        "unknown role": 1,
        "exact duplicate": 1,
    }
    dropped = [json.loads(x) for x in (tmp_path / "ds" / "dropped.jsonl").read_text().splitlines()]
    assert sorted(d["line"] for d in dropped) == [2, 3, 4, 5]
    assert all(d["file"] == str(bad) and d["reason"] and d["record"] for d in dropped)
    assert sum(len(read_split(tmp_path / "ds", s)) for s in SPLITS) == 21
    assert "malformed JSON" in (tmp_path / "ds" / "report.md").read_text()


def test_strict_lists_the_bad_lines_and_writes_nothing(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [conv(1), "{broken", "[]"])
    with pytest.raises(EvalkitError) as info:
        prepare([bad], tmp_path / "ds", PrepareConfig(strict=True))
    assert f"{bad}:2: malformed JSON" in str(info.value)
    assert f"{bad}:3: not a JSON object" in str(info.value)
    assert not (tmp_path / "ds").exists()


def test_pii_is_scrubbed_and_counted(tmp_path):
    record = conv(1)
    record["messages"][1]["content"] = "mail me at jane.doe@example.com or card 4111 1111 1111 1111"
    manifest = prepare(
        [write_jsonl(tmp_path / "in.jsonl", [record])],
        tmp_path / "ds",
        PrepareConfig(ratios=(1, 0, 0)),
    )
    [out] = read_split(tmp_path / "ds", "train")
    assert out["messages"][1]["content"] == "mail me at <EMAIL> or card <CREDIT_CARD>"
    assert manifest["pii"] == {"EMAIL": 1, "CREDIT_CARD": 1}


def test_conversations_and_near_duplicates_stay_in_one_split(tmp_path):
    records = [conv(i, conversation_id=f"g{i // 4}") for i in range(200)]
    base = conv(500)
    near = json.loads(json.dumps(base))
    near["id"] = "c501"
    near["messages"][1]["content"] += " extra"
    records += [base, near]
    manifest = prepare(
        [write_jsonl(tmp_path / "in.jsonl", records)],
        tmp_path / "ds",
        PrepareConfig(near_dup_action="group"),
    )
    where = {r["id"]: s for s in SPLITS for r in read_split(tmp_path / "ds", s)}
    for g in range(50):
        assert len({where[f"c{i}"] for i in range(4 * g, 4 * g + 4)}) == 1
    assert where["c500"] == where["c501"]
    sizes = manifest["stages"][-3]["sizes"]
    assert sizes["train"] > sizes["validation"] > 0 and sizes["test"] > 0


def test_near_duplicates_are_dropped_by_default(tmp_path):
    base = conv(1)
    near = json.loads(json.dumps(base))
    near["id"] = "c2"
    near["messages"][1]["content"] += " extra"
    manifest = prepare(
        [write_jsonl(tmp_path / "in.jsonl", [base, near, conv(3)])],
        tmp_path / "ds",
        PrepareConfig(),
    )
    assert manifest["inputs"][0]["dropped_by_reason"] == {"near duplicate": 1}


def test_balance_caps_and_upsamples_training_only(tmp_path):
    records = [conv(i, topic="big") for i in range(60)] + [
        conv(100 + i, topic="small") for i in range(10)
    ]
    manifest = prepare(
        [write_jsonl(tmp_path / "in.jsonl", records)],
        tmp_path / "ds",
        PrepareConfig(balance_by="topic", cap=30, upsample_to=24, ratios=(0.8, 0.2, 0.0)),
    )
    assert manifest["classes"]["before"] == {"big": 60, "small": 10}  # before the cap
    assert manifest["classes"]["after"] == {
        "big": 30,
        "small": 10 + manifest["counts"]["upsampled"],
    }
    report = (tmp_path / "ds" / "report.md").read_text()
    assert "| class | before balancing | after (all splits) |" in report
    assert "| big | 60 | 30 |" in report
    train = Counter(r["topic"] for r in read_split(tmp_path / "ds", "train"))
    validation = Counter(r["topic"] for r in read_split(tmp_path / "ds", "validation"))
    assert train["small"] == 24  # repeated up to the target
    assert validation["small"] + validation["big"] == len(
        {r["id"] for r in read_split(tmp_path / "ds", "validation")}
    )
    assert manifest["inputs"][0]["dropped_by_reason"] == {"over class cap": 30}
    assert manifest["counts"]["upsampled"] == 24 - (10 - validation["small"])


def test_contaminated_training_records_are_reported_and_dropped(tmp_path):
    leak = "the committee approved the annual budget after a long debate about the new bridge"
    records = [conv(1, text=leak), conv(2), conv(3)]
    eval_set = write_jsonl(tmp_path / "eval.jsonl", [conv(9, text=leak)])
    manifest = prepare(
        [write_jsonl(tmp_path / "in.jsonl", records)],
        tmp_path / "ds",
        PrepareConfig(
            eval_sets={"heldout": str(eval_set)}, drop_contaminated=True, ratios=(1, 0, 0)
        ),
    )
    assert manifest["contamination"]["heldout"]["train_records_overlapping"] == 1
    assert [r["id"] for r in read_split(tmp_path / "ds", "train")] == ["c2", "c3"]


def test_token_bounds_use_the_models_tokenizer(tmp_path, micro_model):
    records = [conv(1), conv(2, text="short")]
    manifest = prepare(
        [write_jsonl(tmp_path / "in.jsonl", records)],
        tmp_path / "ds",
        PrepareConfig(model=str(micro_model), min_tokens=40, max_length=64),
    )
    assert manifest["inputs"][0]["dropped_by_reason"] == {"too short": 1}
    total = sum(t["count"] for t in manifest["tokens"].values())
    assert total == 1


def test_preparing_a_prepared_dataset_changes_nothing(tmp_path):
    records = [conv(i, topic=["a", "b"][i % 2]) for i in range(60)]
    records[5]["messages"][0]["content"] = "  Call  me at +1-202-555-0143 \u00e2\u0080\u0099  "
    first = prepare(
        [write_jsonl(tmp_path / "in.jsonl", records)],
        tmp_path / "one",
        PrepareConfig(balance_by="topic", cap=25),
    )
    second = prepare(
        [tmp_path / "one" / f"{s}.jsonl" for s in SPLITS],
        tmp_path / "two",
        PrepareConfig(balance_by="topic", cap=25),
    )
    for split in SPLITS:
        assert read_split(tmp_path / "one", split) == read_split(tmp_path / "two", split)
    assert second["counts"]["dropped"] == 0
    assert first["files"] == second["files"]


def test_split_groups_follow_the_ratios():
    keys = [f"k{i}" for i in range(1000)]
    sizes = Counter(split_groups(keys, (0.8, 0.1, 0.1), seed=3))
    assert sizes == {"train": 800, "validation": 100, "test": 100}


records_strategy = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 5), st.booleans(), st.booleans()),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records_strategy)
def test_counts_add_up_and_no_conversation_spans_two_splits(tmp_path_factory, rows):
    tmp = tmp_path_factory.mktemp("prop")
    lines = []
    for i, (content, group, broken, no_reply) in enumerate(rows):
        if broken:
            lines.append("{oops")
            continue
        record = conv(content, conversation_id=f"g{group}")
        record["id"] = f"r{i}"
        if no_reply:
            record["messages"] = record["messages"][:1]
        lines.append(record)
    path = write_jsonl(tmp / "in.jsonl", lines)
    if all(broken or no_reply for _, _, broken, no_reply in rows):
        with pytest.raises(EvalkitError, match=f"every record was dropped [(]{len(rows)} read"):
            prepare([path], tmp / "ds", PrepareConfig(near_dup_action="group"))
        assert not (tmp / "ds").exists()
        return
    manifest = prepare([path], tmp / "ds", PrepareConfig(near_dup_action="group"))
    [info] = manifest["inputs"]
    assert info["read"] == len(rows) == info["kept"] + info["dropped"]
    splits_of = {}
    for split in SPLITS:
        for r in read_split(tmp / "ds", split):
            splits_of.setdefault(r["conversation_id"], set()).add(split)
    assert all(len(s) == 1 for s in splits_of.values())


def test_cli_prepare_and_stats(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [conv(i) for i in range(10)] + ["{bad"])
    out = tmp_path / "ds"
    assert main(["data", "prepare", f"mine={src}", "--out", str(out)]) == 0
    assert "11 read" in capsys.readouterr().out
    assert main(["data", "stats", str(out)]) == 0
    assert "| mine | 11 | 10 | 1 |" in capsys.readouterr().out
    (out / "train.jsonl").write_text("")
    assert main(["data", "stats", str(out)]) == 0
    assert "train.jsonl changed" in capsys.readouterr().out
    assert main(["data", "prepare", str(src), "--out", str(out), "--strict"]) == 2
    assert f"{src}:11: malformed JSON" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path)]) == 2


def test_the_event_log_is_an_input_corrections_in_place_of_responses(tmp_path):
    """Served exchanges become conversations; a correction replaces the answer it corrects,
    and every record keeps its event id and feedback."""
    from finetune.data.corpora import load_support_faq
    from monitor.events import EventLog, make_event

    log = EventLog(tmp_path / "events")
    for i, pair in enumerate(load_support_faq()[:30]):  # real, distinct support exchanges
        question, answer = pair["messages"][-2:]
        log.append(make_event(prompt=[question], response=answer["content"], response_id=f"r{i}"))
    fixed = "Use apt install package-0; apt fetches what it depends on."
    log.append(make_event(type="feedback", response_id="r0", user_feedback=-1, correction=fixed))
    log.close()
    manifest = prepare([f"served={tmp_path / 'events'}"], tmp_path / "ds", PrepareConfig())
    assert manifest["counts"]["read"] == 30 and manifest["counts"]["dropped"] == 0
    records = [
        json.loads(line)
        for split in SPLITS
        for line in (tmp_path / "ds" / f"{split}.jsonl").read_text().splitlines()
    ]
    first = next(r for r in records if r["response_id"] == "r0")
    assert first["messages"][-1]["content"] == fixed and first["user_feedback"] == -1
    assert all(r["event_id"].startswith("ev-") for r in records)


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (dict(balance_by="tpoic", cap=5), "--balance-by: unknown metadata field 'tpoic': "
         "no record has it", "did you mean: topic?"),
        (dict(balance_by="nosuchfield"), "unknown metadata field 'nosuchfield'",
         "known: id, source, topic"),
        (dict(balance_by="topic", cap=-3), r"cap \(--cap\) must be at least 1, not -3", ""),
        (dict(balance_by="topic", cap=0), r"cap \(--cap\) must be at least 1, not 0", ""),
        (dict(balance_by="topic", upsample_to=0), r"upsample_to \(--upsample-to\) must be", ""),
    ],
)  # fmt: skip
def test_balancing_options_that_would_drop_data_silently(tmp_path, options, message, hint):
    records = [conv(i, topic=["a", "b"][i % 2]) for i in range(40)]
    with pytest.raises(EvalkitError, match=message) as info:
        prepare([write_jsonl(tmp_path / "in.jsonl", records)], tmp_path / "ds",
                PrepareConfig(**options))  # fmt: skip
    assert info.value.hint == hint
    assert not (tmp_path / "ds").exists()


def test_a_run_that_keeps_nothing_fails_with_the_reasons(tmp_path, capsys):
    records = [conv(i) for i in range(6)]
    for record in records[:4]:
        record["messages"] = record["messages"][:1]  # no assistant turn
    src = write_jsonl(tmp_path / "in.jsonl", [*records, "{bad"])
    args = ["data", "prepare", str(src), "--out", str(tmp_path / "ds"), "--require", "id=c9"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "every record was dropped (7 read)" in err
    assert "validate: no assistant turn: 4" in err
    assert "filter: metadata rule: 2" in err and "read: malformed JSON: 1" in err
    assert not (tmp_path / "ds").exists()
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "ds"), "--balance-by",
                 "topic", "--cap", "0"]) == 2  # fmt: skip
    assert "--cap" in capsys.readouterr().err


def test_token_lengths_are_counted_against_the_models_context(tmp_path, micro_model):
    from transformers import AutoConfig, AutoTokenizer

    records = [conv(i, text=" ".join(WORDS[: 1 + i])) for i in range(12)]
    manifest = prepare(
        [write_jsonl(tmp_path / "in.jsonl", records)],
        tmp_path / "ds",
        PrepareConfig(model=str(micro_model), ratios=(1, 0, 0), near_dedup=False),
    )
    context = AutoConfig.from_pretrained(micro_model).max_position_embeddings
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    lengths = [
        len(tokenizer.apply_chat_template(r["messages"], return_dict=False)) for r in records
    ]
    over = sum(n > context for n in lengths)
    assert 0 < over < len(records)
    assert manifest["options"]["max_length"] == context
    assert manifest["tokens"]["train"]["truncated"] == over
    assert f"over {context} |" in (tmp_path / "ds" / "report.md").read_text()
