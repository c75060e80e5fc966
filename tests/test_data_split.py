"""The stratified seeded split and its split.json."""

import json
from collections import Counter

import numpy as np
import pytest

from project.common.errors import UserError
from project.data.scan import FaceItem
from project.data.split import load_split, new_split, stratified_split


def test_split_is_stratified_and_reproducible():
    groups = np.repeat(np.arange(5), [700, 1200, 400, 100, 30])
    first = stratified_split(groups, seed=3)
    again = stratified_split(groups, seed=3)
    other = stratified_split(groups, seed=4)
    for name in ("train", "val", "test"):
        assert np.array_equal(first[name], again[name])
    assert not np.array_equal(first["test"], other["test"])
    everything = np.concatenate([first["train"], first["val"], first["test"]])
    assert sorted(everything.tolist()) == list(range(len(groups)))  # disjoint and complete
    test_counts = Counter(groups[first["test"]].tolist())
    assert [test_counts[g] for g in range(5)] == [70, 120, 40, 10, 3]
    val_counts = Counter(groups[first["val"]].tolist())
    assert [val_counts[g] for g in range(5)] == [63, 108, 36, 9, 3]


def _items(count=100):
    return [FaceItem(f"{i:03d}.jpg", age=(i * 7) % 125, group=((i * 7) % 125) // 25) for i in range(count)]


def test_a_saved_split_loads_back_whatever_the_seed(tmp_path):
    items = _items()
    usable = np.array([i for i in range(len(items)) if i != 5], dtype=np.int64)  # row 5 cannot be decoded
    split = new_split(items, usable, seed=7)
    assert 5 not in np.concatenate(list(split.indices.values()))
    path = split.save(tmp_path / "split.json", items, seed=7)
    saved = json.loads(path.read_text())
    assert saved["seed"] == 7 and saved["counts"] == split.class_counts(items)
    again = load_split(path, items, usable, tmp_path)
    for name in ("train", "val", "test"):
        assert np.array_equal(again.indices[name], split.indices[name])


def test_a_split_of_other_images_is_a_one_line_error(tmp_path):
    items = _items()
    path = new_split(items, np.arange(len(items)), seed=0).save(tmp_path / "split.json", items, seed=0)
    with pytest.raises(UserError, match="images of .* are not in"):
        load_split(path, items[:50], np.arange(50), tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="cannot read split file"):
        load_split(tmp_path / "broken.json", items, np.arange(len(items)), tmp_path)


@pytest.mark.parametrize("groups", [[1, 1, 1, 1], [0, 1, 2, 3], [1] * 9 + [3] * 14])
def test_small_sets_still_get_a_validation_and_a_test_image(groups):
    items = [FaceItem(f"{i:03d}.jpg", age=25 * g + 1, group=g) for i, g in enumerate(groups)]
    split = new_split(items, np.arange(len(items)), seed=0)
    assert all(len(split.indices[name]) >= 1 for name in ("val", "test")) and len(split.indices["train"]) >= 2
    assert sorted(np.concatenate(list(split.indices.values())).tolist()) == list(range(len(items)))


def test_fewer_than_four_images_cannot_be_split():
    items = [FaceItem(f"{i}.jpg", age=30, group=1) for i in range(3)]
    with pytest.raises(UserError, match="too few images to split: 3 usable; at least 4 are needed"):
        new_split(items, np.arange(3), seed=0)
