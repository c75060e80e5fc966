"""Photo views: a chip degraded like a face found in an ordinary photo, fixed per image."""

import numpy as np
from PIL import Image

from project.data.photo_views import photo_rng, photo_view


def chip(seed=0, side=200):
    """A textured chip (grey with fine detail, so blur and compression show) with a bright bar at columns 60-80 (a
    landmark whose place can be found again)."""
    rng = np.random.default_rng(seed)
    pixels = 110 + rng.normal(0, 25, (side, side, 3))
    pixels[:, 60:80] += 90
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_a_photo_view_is_fixed_by_the_image_path_and_keeps_the_chip_size():
    image = chip()
    first = np.asarray(photo_view(image, photo_rng("part1/30_0_0_1.jpg")))
    again = np.asarray(photo_view(image, photo_rng("part1/30_0_0_1.jpg")))
    other = np.asarray(photo_view(image, photo_rng("part1/31_0_0_1.jpg")))
    assert first.shape == (200, 200, 3) and np.array_equal(first, again)  # same in every run and process
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, np.asarray(image))


def test_photo_views_lose_detail_change_brightness_and_keep_the_face_in_place():
    image = chip(1)
    pixels = np.asarray(image, dtype=float)
    detail = float(np.abs(np.diff(pixels, axis=1)).mean())
    views = [np.asarray(photo_view(image, photo_rng(f"face{i}.jpg")), dtype=float) for i in range(24)]
    means = [view.mean() for view in views]
    assert min(means) < 0.8 * pixels.mean() and max(means) > 1.15 * pixels.mean()  # darker and brighter
    details = [float(np.abs(np.diff(view, axis=1)).mean()) for view in views]
    assert np.median(details) < 0.7 * detail  # smaller faces, turns and JPEG blur the texture
    # the face stays about where it was (a detector's cut is a little off): the bar is found within a tenth of the
    # side of its place in the chip (columns 60-80) or in its mirror image (120-140)
    for view in views:
        bar = int(np.argmax(np.convolve(view.mean(axis=(0, 2)), np.ones(20) / 20, mode="same")))
        assert min(abs(bar - 70), abs(bar - 130)) <= 20, bar
