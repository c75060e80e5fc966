"""The age bins, and the per-year distributions that the default recipe sums into them."""

import pytest
import torch

from project.core.age_groups import (
    AGE_BINS,
    GROUP_BOUNDARIES,
    GROUP_LABELS,
    NUM_CLASSES,
    age_distribution,
    age_to_group,
    group_log_probs,
)


@pytest.mark.parametrize(
    "age, group",
    [(0, 0), (24, 0), (25, 1), (49, 1), (50, 2), (74, 2), (75, 3), (99, 3), (100, 4), (124, 4)],
)
def test_bin_edges(age, group):
    assert age_to_group(age) == group


@pytest.mark.parametrize("age", [-1, 125, 200])
def test_ages_outside_the_bins_have_no_group(age):
    assert age_to_group(age) is None


def test_labels_and_boundaries_agree():
    assert NUM_CLASSES == 5
    assert GROUP_LABELS == ("0-24", "25-49", "50-74", "75-99", "100-124")
    assert GROUP_BOUNDARIES == (25, 50, 75, 100)


def test_group_probabilities_are_sums_over_their_years():
    logits = torch.randn(4, AGE_BINS)
    expected = logits.softmax(dim=1).view(4, 5, 25).sum(dim=2)
    assert torch.allclose(group_log_probs(logits).exp(), expected, atol=1e-6)


def test_age_targets_peak_at_the_age_and_sum_to_one():
    targets = age_distribution(torch.tensor([0, 24, 60, 124]), sigma=3.0)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    assert targets.argmax(dim=1).tolist() == [0, 24, 60, 124]
    # a 24-year-old's target leaks into 25-49 (the neighbouring years), a 60-year-old's does not reach 0-24
    assert targets[1, 25:50].sum() > 0.2 and targets[2, :25].sum() < 1e-6
