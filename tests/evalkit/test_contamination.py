from evalkit.contamination import overlap, word_ngrams

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
