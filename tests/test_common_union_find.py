"""Union-find: groups closed under the unions, rooted at their smallest row whatever the order."""

import random

from project.common.union_find import UnionFind


def test_groups_are_closed_under_the_unions_and_rooted_at_their_smallest_row():
    pairs = [(7, 3), (3, 9), (1, 2), (12, 9), (5, 5)]
    for seed in range(5):
        shuffled = random.Random(seed).sample(pairs, len(pairs))
        groups = UnionFind(range(14))
        for a, b in shuffled:
            groups.union(b, a) if seed % 2 else groups.union(a, b)
        assert groups.groups(range(14)) == [[0], [1, 2], [3, 7, 9, 12], [4], [5], [6], [8], [10], [11], [13]]
        assert groups.find(12) == 3 and groups.size(9) == 4 and groups.size(4) == 1
        assert groups.groups([9, 2, 12]) == [[2], [9, 12]]
