import difflib
import itertools
import json
import os
import random
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.data.corpora import load_support_faq
from finetune.data.dedup import (
    NGRAM,
    exact_key,
    jaccard,
    near_duplicate_clusters,
    normalize_for_hash,
    shingles,
)
from finetune.data.prepare import flatten

ROOT = Path(__file__).resolve().parents[3]


def _words(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def _letters(count: int, seed: int) -> str:
    """Random letters: at this length every 5-character window of the result is distinct."""
    return "".join(random.Random(seed).choices(string.ascii_lowercase, k=count))


def _planted_pair(seed: int, total: int, shared: int) -> tuple[str, str]:
    """Two texts of `total` shingles each, `shared` of them in common.

    Both start with the same `shared + 4` letters; the second goes on with a digit (no window
    that holds it is in the first) and fresh letters, so exactly `shared` 5-character shingles are
    common: Jaccard = shared / (2 * total - shared).
    """
    a = _letters(total + NGRAM - 1, seed)
    b = a[: shared + NGRAM - 1] + "0" + _letters(total - shared - 1, seed + 1)
    return a, b


def _random_texts(count: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = _words("v", 300)
    return [" ".join(rng.choices(vocab, k=words)) for _ in range(count)]


def test_normalize_casefolds_and_collapses_whitespace():
    assert normalize_for_hash("  Straße\tIS\n\n  HERE \r\n") == "strasse is here"
    assert normalize_for_hash("") == ""


def test_exact_key_ignores_case_and_whitespace_only():
    key = exact_key("Hello   World,\nhow are you?")
    assert key == exact_key("  hello world, HOW\tare   you?  ")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != exact_key("hello world how are you?")  # punctuation counts
    assert key != exact_key("hello world, how are you")
    assert key != exact_key("helloworld, how are you?")


def test_shingles_are_character_ngrams_of_the_normalized_words():
    # The words of "The  cat, SAT!" are "the cat sat": 11 characters, 7 windows of 5.
    assert shingles("The  cat, SAT!") == {
        "the c",
        "he ca",
        "e cat",
        " cat ",
        "cat s",
        "at sa",
        "t sat",
    }
    assert shingles("a-b, b\nc", n=1) == {"a", "b", "c", " "}
    assert shingles("Hi, there!") == shingles("hi there")  # punctuation is not part of them
    assert shingles("Hi!") == {"hi"}  # fewer than n characters: one shingle
    assert shingles("") == shingles("?!") == {""}
    with pytest.raises(ValueError, match="n must be"):
        shingles("a b c", n=0)


def test_jaccard():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard({1}, {2}) == 0.0
    assert jaccard({1, 2}, {1, 2}) == 1.0
    assert jaccard(set(), set()) == 1.0


@pytest.mark.parametrize(
    ("similarity", "total", "shared", "clustered"),
    [
        (0.95, 390, 380, True),
        (0.9, 190, 180, True),
        (0.5, 300, 200, False),
        (0.3, 130, 60, False),
    ],
)
def test_planted_pairs_cluster_by_true_jaccard(similarity, total, shared, clustered):
    a, b = _planted_pair(total, total, shared)
    assert len(shingles(a)) == len(shingles(b)) == total
    assert jaccard(shingles(a), shingles(b)) == pytest.approx(similarity)
    unrelated = _letters(100, seed=0)
    reps = near_duplicate_clusters([unrelated, a, b], threshold=0.8)
    assert reps == ([0, 1, 1] if clustered else [0, 1, 2])


def test_clusters_are_transitive():
    letters = _letters(454, seed=4)
    a, b, c = (letters[shift : shift + 404] for shift in (0, 25, 50))
    assert jaccard(shingles(a), shingles(b)) >= 0.8
    assert jaccard(shingles(b), shingles(c)) >= 0.8
    assert jaccard(shingles(a), shingles(c)) < 0.8
    assert near_duplicate_clusters([a, b, c]) == [0, 0, 0]
    # The middle text comes last: it joins two clusters that had formed without it.
    assert near_duplicate_clusters([a, c, b]) == [0, 0, 0]
    assert near_duplicate_clusters(["x y z", c, a, b]) == [0, 1, 1, 1]


def test_unrelated_texts_stay_singletons():
    texts = _random_texts(40, 80)
    assert near_duplicate_clusters(texts) == list(range(40))
    assert near_duplicate_clusters([]) == []


def test_exact_duplicates_up_to_case_and_spacing_cluster():
    texts = ["Hi there, friend", "something else entirely here", "  hi THERE,\tfriend\n"]
    assert near_duplicate_clusters(texts) == [0, 1, 0]
    # Threshold 1 keeps only equal shingle sets, which punctuation does not change.
    assert near_duplicate_clusters(["Hi, there!", "hi there", "hi where"], threshold=1.0) == [
        0,
        0,
        2,
    ]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": -0.5}, "threshold"),
        ({"threshold": 1.01}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"ngram": 0}, "ngram"),
        ({"num_perm": 1}, "num_perm"),
    ],
)
def test_invalid_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        near_duplicate_clusters(["a b c"], **kwargs)


def _mixed_corpus() -> list[str]:
    texts = _random_texts(30, 120, seed=1)
    rng = random.Random(2)
    for source in range(0, 30, 3):  # a near duplicate of every third text: a few words changed
        words = texts[source].split()
        for _ in range(3):
            words[rng.randrange(len(words))] = "changed"
        texts.append(" ".join(words))
    return texts


def test_deterministic_for_the_same_input_and_seed():
    texts = _mixed_corpus()
    reps = near_duplicate_clusters(texts, seed=7)
    assert reps == near_duplicate_clusters(list(texts), seed=7)
    assert sum(r != i for i, r in enumerate(reps)) == 10


def test_independent_of_python_hash_randomization():
    """Shingle sets iterate in an order that depends on PYTHONHASHSEED; the result must not."""
    texts = _mixed_corpus()
    code = (
        "import json, sys; from finetune.data.dedup import near_duplicate_clusters;"
        "print(json.dumps(near_duplicate_clusters(json.load(sys.stdin), seed=7)))"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            input=json.dumps(texts),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1] == near_duplicate_clusters(texts, seed=7)


_VOCAB = ["alpha", "Beta", "GAMMA", "delta", "alpha,", "beta!"]
_SEPARATORS = [" ", "  ", "\n", "\t "]


@st.composite
def _texts(draw):
    words = draw(st.lists(st.sampled_from(_VOCAB), max_size=10))
    separators = draw(st.lists(st.sampled_from(_SEPARATORS), min_size=len(words)))
    return "".join(w + s for w, s in zip(words, separators))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(_texts(), st.text(max_size=12)), max_size=14),
    st.sampled_from([0.3, 0.5, 0.8, 1.0]),
    st.integers(1, 3),
)
def test_every_cluster_points_to_its_own_first_text(texts, threshold, ngram):
    reps = near_duplicate_clusters(texts, threshold=threshold, ngram=ngram)
    assert len(reps) == len(texts)
    for i, rep in enumerate(reps):
        assert 0 <= rep <= i
        assert reps[rep] == rep
    # Texts equal up to case and whitespace always share a cluster.
    first_by_key = {}
    for i, text in enumerate(texts):
        assert reps[i] == reps[first_by_key.setdefault(exact_key(text), i)]
    # No cluster is formed without a confirmed pair: every member has a similar enough partner.
    sets = [shingles(t, ngram) for t in texts]
    for i, rep in enumerate(reps):
        members = [j for j, r in enumerate(reps) if r == rep and j != i]
        assert not members or any(jaccard(sets[i], sets[j]) >= threshold for j in members)


# Real short support exchanges: near duplicates one word apart must be caught (the issue: word
# 3-gram shingles missed them, each edited word changing 3 of ~25 shingles), and different
# answers must not be merged.

_WORD = re.compile(r"\w+")


@pytest.fixture(scope="module")
def support_faq() -> dict[str, str]:
    """The support FAQ's question-answer pairs by id, flattened as data preparation does."""
    return {conv["id"]: flatten(conv) for conv in load_support_faq()}


def _word_3grams(text: str) -> set[str]:
    """The shingles this module used before: word 3-grams of the normalized text."""
    words = _WORD.findall(normalize_for_hash(text))
    return {" ".join(words[i : i + 3]) for i in range(max(len(words) - 2, 1))}


def _question(flat: str) -> str:
    """The user turn of a flattened question-answer pair."""
    return flat.split("\nassistant: ")[0]


def _edit_one_word(text: str, old: str, new: str) -> str:
    """`text` with `old` (once in it) replaced by `new`, checked to be a one-word edit."""
    assert text.count(old) == 1
    edited = text.replace(old, new)
    before, after = (_WORD.findall(normalize_for_hash(t)) for t in (text, edited))
    changes = [
        max(i2 - i1, j2 - j1)
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after).get_opcodes()
        if tag != "equal"
    ]
    assert changes == [1]
    return edited


# (id, old, new): one word substituted in the question or the answer.
_SUBSTITUTIONS = [
    ("pyfaq-programming-0004", "required", "recommended"),
    ("pyfaq-library-0005", "similar", "equivalent"),
    ("pyfaq-programming-0063", "convenience", "helper"),
    ("pyfaq-extending-0007", "Use", "Call"),
    ("debfaq-11.3", "supports", "handles"),
    ("debfaq-3.1.13", "best", "safest"),
    ("debfaq-5.11", "free", "open"),
]
# (id, old, new): one word inserted or deleted.
_INSERTIONS_AND_DELETIONS = [
    ("pyfaq-programming-0004", "standard library", "standard Python library"),
    ("pyfaq-extending-0007", "PyTuple_Pack() instead", "PyTuple_Pack() function instead"),
    ("debfaq-11.3", "this, edit", "this, just edit"),
    ("pyfaq-library-0005", "register function", "function"),
    ("debfaq-3.1.13", "still confused", "confused"),
    ("debfaq-5.11", "two free SWF", "two SWF"),
]


@pytest.mark.parametrize(("conv_id", "old", "new"), _SUBSTITUTIONS)
def test_one_word_substitution_in_a_short_support_exchange_is_a_near_duplicate(
    support_faq, conv_id, old, new
):
    text = support_faq[conv_id]
    assert 20 <= len(_WORD.findall(text)) <= 30  # a two-turn exchange of about 25 words
    edited = _edit_one_word(text, old, new)
    assert jaccard(_word_3grams(text), _word_3grams(edited)) < 0.8  # what word 3-grams missed
    assert jaccard(shingles(text), shingles(edited)) >= 0.8
    assert near_duplicate_clusters([text, edited]) == [0, 0]


@pytest.mark.parametrize(("conv_id", "old", "new"), _INSERTIONS_AND_DELETIONS)
def test_one_word_insertion_or_deletion_in_a_short_support_exchange_is_a_near_duplicate(
    support_faq, conv_id, old, new
):
    text = support_faq[conv_id]
    assert 20 <= len(_WORD.findall(text)) <= 30
    edited = _edit_one_word(text, old, new)
    assert jaccard(shingles(text), shingles(edited)) >= 0.8
    assert near_duplicate_clusters([text, edited]) == [0, 0]


def test_edited_copies_join_their_own_exchange_and_nothing_else_merges(support_faq):
    ids = list(support_faq)
    texts = list(support_faq.values())
    edits = _SUBSTITUTIONS + _INSERTIONS_AND_DELETIONS
    copies = [_edit_one_word(support_faq[conv_id], old, new) for conv_id, old, new in edits]
    reps = near_duplicate_clusters(texts + copies)
    assert reps[: len(texts)] == list(range(len(texts)))
    assert [ids[rep] for rep in reps[len(texts) :]] == [conv_id for conv_id, _, _ in edits]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("pyfaq-extending-0001", "pyfaq-extending-0002"),  # functions in C / in C++
        ("pyfaq-general-0001", "pyfaq-installed-0001"),  # "What is Python?", twice
        ("pyfaq-programming-0026", "pyfaq-programming-0027"),  # string to number / back
        ("debfaq-6.5", "debfaq-6.6"),  # what the testing / unstable distribution contains
    ],
)
def test_different_answers_to_similar_questions_are_not_merged(support_faq, first, second):
    questions = [_question(support_faq[i]) for i in (first, second)]
    assert jaccard(*(shingles(q) for q in questions)) >= 0.5
    texts = [support_faq[first], support_faq[second]]
    assert jaccard(shingles(texts[0]), shingles(texts[1])) < 0.3
    assert near_duplicate_clusters(texts) == [0, 1]


def test_the_support_faq_holds_no_near_duplicates(support_faq):
    """Its ~300 exchanges are all distinct: the closest two are far below the threshold."""
    sets = [shingles(text) for text in support_faq.values()]
    assert max(jaccard(a, b) for a, b in itertools.combinations(sets, 2)) < 0.3
    texts = list(support_faq.values())
    assert near_duplicate_clusters(texts) == list(range(len(texts)))
