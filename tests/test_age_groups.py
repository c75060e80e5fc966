import pytest

from project.age_groups import GROUP_BOUNDARIES, GROUP_LABELS, NUM_CLASSES, age_to_group


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
