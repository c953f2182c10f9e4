import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.data.dedup import (
    exact_key,
    jaccard,
    near_duplicate_clusters,
    normalize_for_hash,
    shingles,
)

ROOT = Path(__file__).resolve().parents[3]


def _words(prefix: str, count: int) -> list[str]:
    """Distinct words, so that every word 3-gram of a text is distinct too."""
    return [f"{prefix}{i}" for i in range(count)]


def _planted_pair(prefix: str, total: int, shared: int) -> tuple[str, str]:
    """Two texts of `total` 3-shingles each, `shared` of them in common.

    Both start with the same `shared + 2` distinct words; the rest of the second text is fresh
    words, so exactly `shared` shingles are common: Jaccard = shared / (2 * total - shared).
    """
    a = _words(f"{prefix}a", total + 2)
    b = a[: shared + 2] + _words(f"{prefix}b", total - shared)
    return " ".join(a), " ".join(b)


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


def test_shingles_are_word_ngrams_of_the_normalized_text():
    assert shingles("The  cat, SAT on\nthe mat.") == {
        "the cat sat",
        "cat sat on",
        "sat on the",
        "on the mat",
    }
    assert shingles("a b c d", n=1) == {"a", "b", "c", "d"}
    assert shingles("Hello, World!") == {"hello world"}  # fewer than n words: one shingle
    assert shingles("") == {""}
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
    a, b = _planted_pair("p", total, shared)
    assert jaccard(shingles(a), shingles(b)) == pytest.approx(similarity)
    unrelated = " ".join(_words("u", 100))
    reps = near_duplicate_clusters([unrelated, a, b], threshold=0.8)
    assert reps == ([0, 1, 1] if clustered else [0, 1, 2])


def test_clusters_are_transitive():
    words = _words("t", 450)
    a, b, c = (" ".join(words[shift : shift + 400]) for shift in (0, 25, 50))
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
