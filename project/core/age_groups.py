"""The age groups: the one definition of the bins, used by training, test, prediction and plots."""

from __future__ import annotations

from typing import Optional

import torch

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


#: Finer age bands for the per-slice error report: (lowest age, highest age or None for "and older").
AGE_BANDS = ((0, 2), (3, 12), (13, 19), (20, 24), (25, 34), (35, 49), (50, 64), (65, 79), (80, None))
AGE_BAND_LABELS = tuple(f"{low}-{high}" if high is not None else f"{low}+" for low, high in AGE_BANDS)


def age_band(age: int) -> int:
    """Index of the :data:`AGE_BANDS` band that ``age`` falls in."""
    for index, (low, high) in enumerate(AGE_BANDS):
        if age >= low and (high is None or age <= high):
            return index
    raise ValueError(f"age {age} is negative")


#: One bin per year of age 0-124: the fine-grained output of heads trained on the exact ages.
AGE_BINS = MAX_AGE + 1


def group_log_probs(age_logits: torch.Tensor) -> torch.Tensor:
    """Log-probability of each age group from per-year logits (``N x 125`` -> ``N x 5``).

    A group's probability is the sum of its 25 years' probabilities, so the group prediction is exactly what the
    per-year distribution says, and ``softmax`` of the result gives those group probabilities back.
    """
    log_probs = torch.log_softmax(age_logits.float(), dim=1)
    return torch.logsumexp(log_probs.view(-1, NUM_CLASSES, GROUP_WIDTH), dim=2)


def age_distribution(ages: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soft per-year targets: a Gaussian of width ``sigma`` years around each true age (``N`` -> ``N x 125``).

    A face labelled 24 looks much like one labelled 26; spreading the label over neighbouring years tells the head
    so (label distribution learning), where a hard group label calls them as different as 24 and 90.
    """
    years = torch.arange(AGE_BINS, dtype=torch.float32, device=ages.device)
    weights = torch.exp(-0.5 * ((years[None, :] - ages[:, None].float()) / sigma) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)
