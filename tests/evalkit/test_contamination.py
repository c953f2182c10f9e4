import json

from evalkit.contamination import NGRAM, conversation_text, overlap, word_ngrams
from evalkit.results import prompt_messages

EVAL = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"


def test_a_shared_13_gram_is_found_and_a_12_gram_is_not():
    words = EVAL.split()
    shares_13 = "intro words " + " ".join(words[2:15]) + " outro"
    shares_12 = "intro words " + " ".join(words[2:14]) + " outro"
    hits, contaminated = overlap([shares_12, shares_13, "unrelated text"], [EVAL], n=13)
    assert hits == [1]
    assert contaminated == 1


def test_case_and_punctuation_do_not_hide_overlap():
    upper = EVAL.upper().replace(" ", ", ")
    assert word_ngrams(upper, 13) == word_ngrams(EVAL, 13)
    assert word_ngrams("too short", 13) == set()


def test_preparation_and_the_gate_read_a_conversation_alike():
    """Data preparation checks whole conversations; the gate rebuilds each evaluation example
    from the stored prompt and reference. Both give the same text, so the same verdict, and an
    n-gram that spans two turns is found (role names are not part of it)."""
    words = EVAL.split()
    messages = [
        {"role": "user", "content": " ".join(words[:8])},
        {"role": "assistant", "content": " ".join(words[8:])},
    ]
    stored = conversation_text([*prompt_messages(json.dumps(messages[:1])), messages[1]])
    assert stored == conversation_text(messages)
    assert overlap([EVAL], [stored], n=NGRAM) == ([0], 1)
    assert conversation_text(prompt_messages("a plain prompt")) == "a plain prompt"
