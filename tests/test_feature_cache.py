"""The frozen-feature cache: what its key depends on, reuse, crash safety, precision, broken images."""

import json

import numpy as np
import pytest
import torch
from helpers.models import random_backbone
from helpers.synthetic import write_undecodable_jpeg

from project.core.transforms import normalize_pixels
from project.data.datasets import ImageDataset
from project.data.feature_cache import CalibratedEncoder, FeatureCacheBuilder, FeatureEncoder, Shard, shard_rows
from project.data.scan import scan_utkface


def make_builder(backbone, cache_dir, precision="32-true"):
    return FeatureCacheBuilder(backbone, precision, cache_dir, batch_size=16, num_workers=0, progress=False)


def key(builder, root, relpaths, image_size=32, view="original"):
    return builder.identity(root, relpaths, image_size, view)[0]


def test_the_backbone_is_a_feature_encoder_that_needs_no_calibration(cache_dir):
    backbone = random_backbone("block4")
    assert isinstance(backbone, FeatureEncoder) and not isinstance(backbone, CalibratedEncoder)
    with pytest.raises(ValueError, match="need an encoder that calibrates itself"):
        FeatureCacheBuilder(backbone, "int8", cache_dir, progress=False)


def test_cached_rows_are_the_backbone_output_of_each_view(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items[:10]
    backbone = random_backbone("block4")
    builder = make_builder(backbone, cache_dir)
    for view in ("original", "mirrored", "photo"):
        images = torch.stack([ImageDataset(utkface_dir, items, 32, views=view)[i]["images"][0] for i in range(10)])
        with torch.no_grad():
            expected = backbone(images)
        cached = builder.build(utkface_dir, items, 32, view).read(np.arange(10))
        assert cached.shape == (10, 512, 1, 1) and torch.allclose(cached, expected, atol=1e-5)


def test_key_of_the_original_cache_is_unchanged_and_new_options_get_their_own(utkface_dir, cache_dir):
    relpaths = [item.relpath for item in scan_utkface(utkface_dir).items]
    block5 = make_builder(random_backbone(), cache_dir)
    identity = block5.identity(utkface_dir, relpaths, 32, "original")[1]
    assert "layer" not in identity and "mirrored" not in identity  # caches made before these options stay valid
    assert set(identity) == {"format", "files", "count", "image_size", "preprocessing", "dtype", "backbone"}
    block4 = make_builder(random_backbone("block4"), cache_dir)
    keys = {key(block5, utkface_dir, relpaths), key(block4, utkface_dir, relpaths),
            key(block4, utkface_dir, relpaths, view="mirrored"), key(block5, utkface_dir, relpaths, view="mirrored"),
            key(block4, utkface_dir, relpaths, view="photo")}
    assert len(keys) == 5


def test_key_changes_with_weights_size_precision_and_files(utkface_dir, cache_dir):
    relpaths = [item.relpath for item in scan_utkface(utkface_dir).items]
    backbone = random_backbone()
    base = key(make_builder(backbone, cache_dir), utkface_dir, relpaths)
    assert key(make_builder(backbone, cache_dir), utkface_dir, relpaths) == base  # stable
    other = random_backbone()
    other.layers[0].bias.data += 1
    assert key(make_builder(other, cache_dir), utkface_dir, relpaths) != base
    assert key(make_builder(backbone, cache_dir), utkface_dir, relpaths, image_size=64) != base
    assert key(make_builder(backbone, cache_dir, precision="bf16-mixed"), utkface_dir, relpaths) != base
    assert key(make_builder(backbone, cache_dir), utkface_dir, relpaths[:-1]) != base
    # same name, different content (size) -> different key
    (utkface_dir / relpaths[0]).write_bytes((utkface_dir / relpaths[0]).read_bytes() + b"\x00")
    assert key(make_builder(backbone, cache_dir), utkface_dir, relpaths) != base


def test_cache_is_reused_and_a_truncated_cache_is_rebuilt(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items
    builder = make_builder(random_backbone(), cache_dir)
    first = builder.build(utkface_dir, items, 32)
    reference = first.read(np.arange(len(items))).clone()
    path = first.path
    assert builder.last_build_stats["images"] == 60
    builder.last_build_stats = None
    builder.build(utkface_dir, items, 32)
    assert builder.last_build_stats is None  # opened, not rebuilt
    del first
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    rebuilt = builder.build(utkface_dir, items, 32)
    assert builder.last_build_stats["images"] == 60
    assert torch.equal(rebuilt.read(np.arange(len(items))), reference)


def test_an_interrupted_build_resumes_where_it_stopped(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items
    builder = make_builder(random_backbone(), cache_dir)
    complete = builder.build(utkface_dir, items, 32)
    reference = complete.read(np.arange(len(items))).clone()
    paths = builder.paths(key(builder, utkface_dir, [i.relpath for i in items]))
    # Pretend a run was killed after 40 rows: a partial file, its progress, no final file.
    paths["final"].rename(paths["partial"])
    partial = np.load(paths["partial"], mmap_mode="r+")
    partial[40:] = 0
    partial.flush()
    del partial
    paths["progress"].write_text(json.dumps({"rows_done": 40, "undecodable_rows": []}))
    resumed = builder.build(utkface_dir, items, 32)
    assert builder.last_build_stats["images"] == 20  # only the missing rows were computed
    assert torch.equal(resumed.read(np.arange(len(items))), reference)
    assert not paths["partial"].exists() and not paths["progress"].exists()


def test_bf16_cache_stores_bf16_values(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items[:8]
    backbone = random_backbone()
    cache = make_builder(backbone, cache_dir, precision="bf16-mixed").build(utkface_dir, items, 32)
    assert cache.array.dtype == np.int16 and cache.dtype_name == "bfloat16"
    fp32 = make_builder(backbone, cache_dir).build(utkface_dir, items, 32).read(np.arange(8))
    bf16 = cache.read(np.arange(8))
    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16, fp32, rtol=0.05, atol=0.05)


def test_undecodable_images_are_recorded_with_the_cache(utkface_dir, cache_dir):
    broken = write_undecodable_jpeg(utkface_dir)
    items = scan_utkface(utkface_dir).items
    row = next(i for i, item in enumerate(items) if item.relpath == broken.name)
    builder = make_builder(random_backbone(), cache_dir)
    assert builder.build(utkface_dir, items, 32).undecodable_rows == [row]
    builder.last_build_stats = None
    assert builder.build(utkface_dir, items, 32).undecodable_rows == [row]  # remembered by the finished cache
    assert builder.last_build_stats is None


def test_a_cache_holds_one_stored_view(utkface_dir, cache_dir):
    with pytest.raises(ValueError, match="one of the views"):
        make_builder(random_backbone(), cache_dir).build(utkface_dir, scan_utkface(utkface_dir).items, 32,
                                                             "both")


@pytest.mark.parametrize("rows,count,batch", [(60, 2, 8), (60, 2, 32), (23707, 8, 64), (5, 4, 8), (0, 3, 8)])
def test_shard_blocks_cover_every_row_once_on_batch_boundaries(rows, count, batch):
    blocks = shard_rows(rows, count, batch)
    assert len(blocks) == count and blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(end == next_start for (_, end), (next_start, _) in zip(blocks, blocks[1:]))
    assert all(start % batch == 0 or start == rows for start, _ in blocks)
    sizes = [end - start for start, end in blocks]
    assert max(sizes) - min(sizes) <= batch or rows < batch * count  # as equal as whole batches allow


def test_a_shard_must_exist():
    with pytest.raises(ValueError, match="shard 2 of 2"):
        Shard(2, 2)


def test_uint8_pixels_normalised_later_are_the_float_preprocessing_bit_for_bit(utkface_dir):
    """The cache build moves uint8 pixels and normalises them where the backbone runs: the same bits, so the same
    features and cache keys as the float path that training without a cache and prediction use."""
    items = scan_utkface(utkface_dir).items[:12]
    floats = ImageDataset(utkface_dir, items, 36, views="both")
    pixels = ImageDataset(utkface_dir, items, 36, views="both", pixels=True)
    for index in range(len(items)):
        raw = pixels[index]["images"]
        assert raw.dtype == torch.uint8
        assert torch.equal(normalize_pixels(raw), floats[index]["images"])


def test_an_undecodable_image_row_is_stored_as_zeros(utkface_dir, cache_dir):
    broken = write_undecodable_jpeg(utkface_dir)
    items = scan_utkface(utkface_dir).items
    row = next(i for i, item in enumerate(items) if item.relpath == broken.name)
    cache = make_builder(random_backbone(), cache_dir).build(utkface_dir, items, 32)
    assert cache.undecodable_rows == [row]
    neighbour = row + 1 if row + 1 < len(items) else row - 1
    assert not cache.read(np.array([row])).any() and cache.read(np.array([neighbour])).any()
