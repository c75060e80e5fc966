"""Disjoint sets of rows (union-find): copies of one photo, one person's photos, units of a split."""

from __future__ import annotations

from typing import Dict, Iterable, List


class UnionFind:
    """Groups of integer rows closed under :meth:`union`. A group's root is always its smallest row, so the groups
    and their roots do not depend on the order of the unions."""

    def __init__(self, rows: Iterable[int] = ()) -> None:
        self._parent: Dict[int, int] = {row: row for row in rows}
        self._size: Dict[int, int] = {row: 1 for row in self._parent}

    def find(self, row: int) -> int:
        """The root (smallest row) of ``row``'s group; a row never seen is a group of its own."""
        parent = self._parent
        parent.setdefault(row, row)
        while parent[row] != row:
            parent[row] = parent[parent[row]]  # path halving
            row = parent[row]
        return row

    def union(self, a: int, b: int) -> int:
        """Join the groups of ``a`` and ``b``; return the joined group's root."""
        first, other = self.find(a), self.find(b)
        if first == other:
            return first
        low, high = min(first, other), max(first, other)
        self._size[low] = self._size.get(low, 1) + self._size.get(high, 1)
        self._parent[high] = low
        return low

    def size(self, row: int) -> int:
        """How many rows ``row``'s group holds."""
        return self._size.get(self.find(row), 1)

    def groups(self, rows: Iterable[int]) -> List[List[int]]:
        """The groups of ``rows``, each sorted, in the order of their smallest row."""
        members: Dict[int, List[int]] = {}
        for row in sorted(set(rows)):
            members.setdefault(self.find(row), []).append(row)
        return sorted(members.values())
