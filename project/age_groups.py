"""The age groups: the one definition of the bins, used by training, test, prediction and plots."""

from __future__ import annotations

from typing import Optional

#: Width of every age group in years. The notebook binned ages into 25-year groups.
GROUP_WIDTH = 25
#: Number of groups: 0-24, 25-49, 50-74, 75-99, 100-124.
NUM_CLASSES = 5
#: Lower and upper (inclusive) age of each group, in class-index order.
GROUP_RANGES = tuple((i * GROUP_WIDTH, (i + 1) * GROUP_WIDTH - 1) for i in range(NUM_CLASSES))
#: Human-readable label of each class index, e.g. ``"25-49"``.
GROUP_LABELS = tuple(f"{low}-{high}" for low, high in GROUP_RANGES)
#: Ages at which a new group starts (25, 50, 75, 100): handy for plots.
GROUP_BOUNDARIES = tuple(low for low, _ in GROUP_RANGES[1:])
MAX_AGE = GROUP_RANGES[-1][1]


def age_to_group(age: int) -> Optional[int]:
    """Return the class index of ``age`` (in whole years), or ``None`` if it lies outside 0-124."""
    if age < 0 or age > MAX_AGE:
        return None
    return age // GROUP_WIDTH
