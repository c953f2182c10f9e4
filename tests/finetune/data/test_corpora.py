import re
import statistics
from collections import Counter

import pytest

from evalkit.errors import EvalkitError
from finetune.data.corpora import load_chitchat, load_support_faq, load_topics, read_jsonl


@pytest.fixture(scope="module")
def chitchat():
    return load_chitchat()


@pytest.fixture(scope="module")
def topics():
    return load_topics()


def _roles_alternate(conversation):
    roles = [m["role"] for m in conversation["messages"]]
    return roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)


def test_chitchat_keeps_every_conversation_and_its_metadata(chitchat):
    assert len(chitchat) == 7168
    assert len({c["id"] for c in chitchat}) == 7168
    assert all(_roles_alternate(c) for c in chitchat)
    first = chitchat[0]
    assert set(first["ratings"]) == {"witty", "upbeat", "interesting"}
    assert first["start"] and len(first["timestamps"]) == len(first["messages"])
    utterances = sum(m["content"].count("\n") + 1 for c in chitchat for m in c["messages"])
    assert utterances == 258145  # every line of the package, none lost


def test_topics_are_deduplicated(topics):
    per_topic = Counter(c["topic"] for c in topics)
    assert per_topic["tech_support"] == 10  # 1,050 rows in the file
    assert len(per_topic) == 19
    assert 840 <= len(topics) <= 880
    keys = [tuple(m["content"] for m in c["messages"]) for c in topics]
    assert len(keys) == len(set(keys))
    assert all(_roles_alternate(c) for c in topics)


def test_support_faq_is_clean_question_answer_pairs():
    faq = load_support_faq()
    sources = Counter(c["source"] for c in faq)
    assert 150 <= sources["python-faq"] <= 200
    assert 100 <= sources["debian-faq"] <= 140
    answers = [c["messages"][1]["content"] for c in faq]
    assert 400 <= statistics.median(len(a) for a in answers) <= 1200
    for conv in faq:
        user, assistant = conv["messages"]
        assert user["role"] == "user" and "?" in user["content"]
        assert assistant["role"] == "assistant" and assistant["content"].strip()
        assert conv["section"] and conv["license"]
    markup = re.compile(r"``|:(func|mod|meth|class|ref|term|data|attr|exc|c:func):`|`_\b")
    assert not [a for a in answers if markup.search(a)]


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n{oops\n')
    with pytest.raises(EvalkitError, match=r"bad.jsonl:2: not a JSON object"):
        read_jsonl(path)


def test_unreadable_corpus_is_named(tmp_path):
    with pytest.raises(EvalkitError, match="cannot read corpus"):
        load_chitchat(tmp_path / "missing.json")
    with pytest.raises(EvalkitError, match="no topic files"):
        load_topics(tmp_path)
