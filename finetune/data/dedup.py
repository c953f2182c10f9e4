"""Exact and near-duplicate detection for conversation texts.

The data-preparation pipeline flattens each conversation to one text and calls these.
``exact_key`` is equal for texts that differ only in case and whitespace.
``near_duplicate_clusters`` groups texts whose sets of character n-grams (shingles, see
``shingles``) have a Jaccard similarity of at least a threshold: MinHash LSH (``datasketch``)
proposes candidate pairs in near-linear time, and each candidate is confirmed with the exact
Jaccard similarity, so an LSH false positive never merges two clusters. LSH can still miss a pair
(a false negative), most often one just above the threshold; ``_LSH_WEIGHTS`` keeps that rare.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+")

# Characters per shingle. An edited word changes the shingles that overlap it, its length + 4,
# of about 6 per word of text: a one-word edit in a 25-word exchange leaves Jaccard near 0.85,
# where word 3-grams (3 of ~25 shingles changed) left it just under 0.8 and missed it. On the
# support FAQ and the chat corpora, 4-grams also merge more chats a word or two apart, and 6-
# and 7-grams miss more one-word edits of short exchanges.
NGRAM = 5

# How datasketch weighs LSH false positives against false negatives when it picks the bands.
# A false positive costs one exact set comparison; a false negative silently keeps a duplicate,
# so misses weigh more. At threshold 0.8 and 128 permutations a pair at Jaccard 0.8 becomes a
# candidate with probability 0.87 and one at 0.9 with 0.999 (0.40 and 0.93 with equal weights).
_LSH_WEIGHTS = (0.1, 0.9)

# The 32-bit hash of each shingle. CRC-32 (C, stdlib) is about 5x faster than datasketch's default
# SHA-1 and estimates Jaccard as well: datasketch's default "affine32" scheme pre-mixes every input
# hash with the MurmurHash3 finalizer before permuting. Fixed, so sketches are reproducible.
_SHINGLE_HASH = zlib.crc32


def normalize_for_hash(text: str) -> str:
    """The text casefolded, whitespace runs collapsed to one space, the ends stripped."""
    # str.split() splits on exactly the characters that re's \s matches, and faster.
    return " ".join(text.casefold().split())


def exact_key(text: str) -> str:
    """SHA-256 hex digest of the normalized text: equal for texts equal up to case and spacing."""
    return hashlib.sha256(normalize_for_hash(text).encode("utf-8")).hexdigest()


def _shingles_of_normalized(normalized: str, n: int) -> set[str]:
    words = " ".join(_WORD.findall(normalized))
    if len(words) <= n:
        return {words}
    return {words[i : i + n] for i in range(len(words) - n + 1)}


def shingles(text: str, n: int = NGRAM) -> set[str]:
    """Character n-grams of the normalized text's ``\\w+`` words joined by one space.

    Character rather than word n-grams so that one edited word changes few shingles even in a
    short text (see ``NGRAM``); punctuation is dropped, as it says little about duplication.
    A text of fewer than ``n`` such characters, even of none, gives one shingle of all of them,
    so short texts still compare and every text has at least one shingle.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    return _shingles_of_normalized(normalize_for_hash(text), n)


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity ``|a & b| / |a | b|`` of two sets; 1.0 for two empty (equal) sets."""
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def _make_lsh(threshold: float, num_perm: int) -> MinHashLSH:
    try:
        return MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
    except ValueError:
        # Near 1, datasketch's optimum is a single band, which it refuses (the arguments are
        # already validated, so this is the only ValueError left). Two bands of half the
        # permutations each still pair identical sketches every time.
        return MinHashLSH(threshold=threshold, num_perm=num_perm, params=(2, num_perm // 2))


class UnionFind:
    """Disjoint sets of indices whose root is always the smallest index (the first member)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def near_duplicate_clusters(
    texts: Sequence[str],
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = NGRAM,
    seed: int = 1,
) -> list[int]:
    """For each text, the index of the first text of its near-duplicate cluster (itself if none).

    Texts are compared by the Jaccard similarity of their ``shingles(text, ngram)``. Candidate
    pairs come from MinHashLSH at `threshold`; each candidate pair is confirmed with the exact
    Jaccard similarity of the shingle sets (>= threshold), and confirmed pairs are merged with
    union-find, so clusters are transitive. Deterministic for a given seed and input order.
    Texts equal after ``normalize_for_hash`` are grouped directly, without LSH.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram!r}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be >= 2, got {num_perm!r}")

    clusters = UnionFind(len(texts))
    find, union = clusters.find, clusters.union

    # Exact duplicates (after normalization) have equal shingle sets: one sketch per distinct text.
    first_index: dict[str, int] = {}
    normalized: dict[int, str] = {}
    for i, text in enumerate(texts):
        norm = normalize_for_hash(text)
        first = first_index.setdefault(norm, i)
        if first == i:
            normalized[i] = norm
        else:
            union(i, first)

    # Shingle sets are kept only for texts that take part in a candidate pair.
    kept: dict[int, set[str]] = {}

    def shingle_set(i: int) -> set[str]:
        if i not in kept:
            kept[i] = _shingles_of_normalized(normalized[i], ngram)
        return kept[i]

    lsh = _make_lsh(threshold, num_perm)
    template = MinHash(num_perm=num_perm, seed=seed, hashfunc=_SHINGLE_HASH)
    for i, norm in normalized.items():
        own = _shingles_of_normalized(norm, ngram)
        minhash = template.copy()
        minhash.update_batch([s.encode("utf-8") for s in own])
        candidates = lsh.query(minhash)
        if candidates:
            kept[i] = own
            for j in candidates:
                if find(i) != find(j) and jaccard(own, shingle_set(j)) >= threshold:
                    union(i, j)
        lsh.insert(i, minhash, check_duplication=False)
    return [find(i) for i in range(len(texts))]
