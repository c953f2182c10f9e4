"""Train/validation/test splits that keep related records together and stay put on reruns."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

from finetune.data.dedup import UnionFind

SPLITS = ("train", "validation", "test")


def seeded_key(seed: int, key: str) -> int:
    """A seeded, platform-independent hash: the order of records for splits and sampling."""
    return zlib.crc32(f"{seed}:{key}".encode())


def split_groups(group_keys: Sequence[str], ratios: Sequence[float], seed: int) -> list[str]:
    """Assign each item a split so that items with the same group key share one.

    Groups are ordered by a seeded hash of their key and cut where the running share of items
    crosses each ratio: exact shares for large data, and the same assignment whenever the same
    records come back (so preparing a prepared dataset changes nothing).
    """
    sizes = Counter(group_keys)
    order = sorted(sizes, key=lambda k: (seeded_key(seed, k), k))
    bounds = [ratios[0], ratios[0] + ratios[1]]
    total = len(group_keys)
    assignment = {}
    seen = 0
    for key in order:
        share = (seen + sizes[key] / 2) / total  # the group's midpoint decides
        assignment[key] = (
            SPLITS[0] if share < bounds[0] else SPLITS[1] if share < bounds[1] else SPLITS[2]
        )
        seen += sizes[key]
    return [assignment[k] for k in group_keys]


def assign_splits(
    keys: Sequence[str], linked: Iterable[tuple[int, int]], ratios: Sequence[float], seed: int
) -> tuple[list[str], int]:
    """Splits for items with group ``keys`` where ``linked`` index pairs (near duplicates) must
    also share a split; returns the splits and the number of groups."""
    groups = UnionFind(len(keys))
    first_with: dict[str, int] = {}
    for i, key in enumerate(keys):
        groups.union(i, first_with.setdefault(key, i))
    for i, j in linked:
        groups.union(i, j)
    roots = [groups.find(i) for i in range(len(keys))]
    name: dict[int, str] = {}
    for key, root in zip(keys, roots):  # a group is named by its smallest key: order-free
        name[root] = min(name.get(root, key), key)
    return split_groups([name[r] for r in roots], ratios, seed), len(name)
