"""Datasets: decoded images and cached features, both as dicts with an explicit views dimension."""

import numpy as np
import pytest
import torch
from helpers.synthetic import write_undecodable_jpeg

from project.common.errors import UserError
from project.core.transforms import build_transform, load_rgb_image, mirror
from project.data.datasets import CachedFeatureDataset, ImageDataset, find_undecodable
from project.data.photo_views import photo_rng, photo_view
from project.data.scan import scan_utkface


@pytest.mark.parametrize("views, count", [("original", 1), ("mirrored", 1), ("photo", 1), ("random", 1),
                                          ("random+photo", 1), ("both", 2)])
def test_image_items_hold_their_views(utkface_dir, views, count):
    items = scan_utkface(utkface_dir).items
    item = ImageDataset(utkface_dir, items, 32, views=views)[3]
    assert item["images"].shape == (count, 3, 32, 32)
    assert (item["group"], item["age"]) == (items[3].group, items[3].age) and "decoded" not in item
    face = ImageDataset(utkface_dir, items, 32)[3]["images"][0]
    if views == "both":
        assert torch.equal(item["images"][0], face) and torch.equal(item["images"][1], mirror(face))
    if views == "mirrored":
        assert torch.equal(item["images"][0], mirror(face))
    if views == "photo":  # the item's own fixed photo view, through the one preprocessing path
        chip = load_rgb_image(utkface_dir / items[3].relpath)
        expected = build_transform(32)(photo_view(chip, photo_rng(items[3].relpath)))
        assert torch.equal(item["images"][0], expected) and not torch.equal(item["images"][0], face)


class _Rows:
    """A stand-in feature cache whose row ``r`` is filled with ``r`` (and ``-r`` for the mirror images)."""

    def __init__(self, sign):
        self.sign = sign

    def read(self, rows):
        return self.sign * torch.as_tensor(np.asarray(rows), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 1, 1)


def test_cached_items_read_each_view_from_its_cache(utkface_dir):
    items = scan_utkface(utkface_dir).items[:6]
    rows = np.arange(10, 16)
    caches = {"original": _Rows(1), "mirrored": _Rows(-1)}
    both = CachedFeatureDataset(caches, rows, items, "both").__getitems__([0, 2])
    assert both["features"].shape == (2, 2, 2, 1, 1)
    assert both["features"][:, 0, 0, 0, 0].tolist() == [10, 12]
    assert both["features"][:, 1, 0, 0, 0].tolist() == [-10, -12]
    assert both["group"].tolist() == [items[0].group, items[2].group]
    torch.manual_seed(0)
    drawn = CachedFeatureDataset(caches, rows, items, "random").__getitems__(list(range(6)))["features"]
    assert drawn.shape == (6, 1, 2, 1, 1) and set(drawn[:, 0, 0, 0, 0].abs().tolist()) == set(rows.tolist())
    with pytest.raises(ValueError, match="mirrored feature cache"):
        CachedFeatureDataset({"original": _Rows(1)}, rows, items, "random")


def test_photo_views_are_a_third_of_training_items_and_need_their_cache(utkface_dir):
    items = scan_utkface(utkface_dir).items
    rows = np.arange(1, len(items) + 1)
    caches = {"original": _Rows(1), "mirrored": _Rows(-1), "photo": _Rows(1000)}
    torch.manual_seed(0)
    drawn = CachedFeatureDataset(caches, rows, items, "random+photo").__getitems__(list(range(len(items))))
    values = drawn["features"][:, 0, 0, 0, 0]
    photo = values >= 1000
    row_of = torch.where(photo, values / 1000, values.abs())
    assert torch.equal(row_of, torch.as_tensor(rows, dtype=torch.float32))  # each item reads its own row
    counts = [int(((values > 0) & ~photo).sum()), int((values < 0).sum()), int(photo.sum())]
    assert all(len(items) / 6 < count < len(items) / 2 for count in counts), counts  # about a third each
    with pytest.raises(ValueError, match="photo feature cache"):
        CachedFeatureDataset({"original": _Rows(1), "mirrored": _Rows(-1)}, rows, items, "random+photo")


def test_random_views_draw_the_same_coins_with_and_without_the_cache(utkface_dir):
    """So a run on cached features sees the same mirror images as a run on the JPEGs."""
    items = scan_utkface(utkface_dir).items[:8]
    caches = {"original": _Rows(1), "mirrored": _Rows(-1)}
    torch.manual_seed(3)
    cached = CachedFeatureDataset(caches, np.arange(1, 9), items, "random").__getitems__(list(range(8)))
    mirrored_rows = (cached["features"][:, 0, 0, 0, 0] < 0).tolist()
    images = ImageDataset(utkface_dir, items, 32, views="random")
    originals = ImageDataset(utkface_dir, items, 32)
    torch.manual_seed(3)
    drawn = [not torch.equal(images[i]["images"], originals[i]["images"]) for i in range(8)]
    assert drawn == mirrored_rows and any(drawn) and not all(drawn)


def test_undecodable_images_raise_one_line_or_are_flagged(utkface_dir):
    broken = write_undecodable_jpeg(utkface_dir)
    items = scan_utkface(utkface_dir).items
    row = next(i for i, item in enumerate(items) if item.relpath == broken.name)
    with pytest.raises(UserError, match="cannot decode .*delete or replace it"):
        ImageDataset(utkface_dir, items, 32)[row]
    flagged = ImageDataset(utkface_dir, items, 32, on_error="flag")
    assert flagged[row]["decoded"] is False and flagged[0]["decoded"] is True
    assert find_undecodable(utkface_dir, items, num_workers=0) == [row]


def test_photo_views_are_drawn_alike_with_and_without_the_cache(utkface_dir):
    """So a run on cached features trains on the same views as a run on the JPEGs (the cached rows themselves are
    the backbone's output of each view: tests/test_feature_cache.py)."""
    items = scan_utkface(utkface_dir).items[:12]
    caches = {"original": _Rows(1), "mirrored": _Rows(-1), "photo": _Rows(1000)}
    torch.manual_seed(3)
    values = CachedFeatureDataset(caches, np.arange(1, 13), items, "random+photo").__getitems__(list(range(12)))
    values = values["features"][:, 0, 0, 0, 0]
    from_cache = ["photo" if v >= 1000 else "mirrored" if v < 0 else "original" for v in values.tolist()]
    each_view = {view: ImageDataset(utkface_dir, items, 32, views=view) for view in ("original", "mirrored", "photo")}
    drawn = ImageDataset(utkface_dir, items, 32, views="random+photo")
    torch.manual_seed(3)
    served = [drawn[i]["images"] for i in range(12)]  # one draw per item, in order, as training reads them
    from_images = [[view for view, dataset in each_view.items() if torch.equal(dataset[i]["images"], images)]
                   for i, images in enumerate(served)]
    assert from_images == [[view] for view in from_cache] and len(set(from_cache)) == 3
