"""The frozen-feature cache: equivalence with the raw-image path, keys, crash safety."""

import json

import numpy as np
import torch

from project.datasets.utkface import FaceImageDataset, UTKFaceDataModule, scan_utkface
from project.features import FeatureCacheBuilder
from project.lit_classifier_main import LitClassifier
from project.models.backbone import build_backbone
from project.recipes import DEFAULT


def make_builder(backbone, cache_dir, image_size=32, precision="32-true", mirrored=False):
    return FeatureCacheBuilder(backbone, image_size, precision, cache_dir, batch_size=16, num_workers=0,
                               progress=False, mirrored=mirrored)


def test_logits_from_cache_equal_logits_from_images(utkface_dir, cache_dir):
    torch.manual_seed(0)
    model = LitClassifier(image_size=32, backbone_weights="none").eval()
    dm = UTKFaceDataModule(utkface_dir, batch_size=16, image_size=32, num_workers=0, cache_dir=cache_dir)
    dm.use_feature_cache(make_builder(model.backbone, cache_dir))
    dm.setup("test")
    cached = torch.cat([model.logits(x) for x, *_ in dm.test_dataloader()])
    raw = FaceImageDataset(dm.root, dm.split_items("test"), 32)
    images = torch.stack([raw[i][0] for i in range(len(raw))])
    with torch.no_grad():
        direct = model(images)
    assert cached.shape == direct.shape == (5, 5)
    assert torch.allclose(cached, direct, atol=1e-4)


def test_default_recipe_from_the_two_caches_equals_the_image_path(utkface_dir, cache_dir):
    """Block-4 features of each face and of its mirror image, averaged: cached == computed from the JPEGs."""
    torch.manual_seed(0)
    model = LitClassifier(image_size=32, backbone_weights="none", **DEFAULT.model_kwargs()).eval()
    dm = UTKFaceDataModule(utkface_dir, batch_size=16, image_size=32, num_workers=0, cache_dir=cache_dir, mirror=True)
    dm.use_feature_cache(make_builder(model.backbone, cache_dir),
                         make_builder(model.backbone, cache_dir, mirrored=True))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))[0]
    assert batch.shape == (5, 2, 512, 1, 1)  # each face and its mirror image
    with torch.no_grad():
        cached = model.logits(batch)
        raw = FaceImageDataset(dm.root, dm.split_items("test"), 32)
        direct = model(torch.stack([raw[i][0] for i in range(len(raw))]))
    assert torch.allclose(cached, direct, atol=1e-4)


def test_key_of_the_original_cache_is_unchanged_and_new_options_get_their_own(utkface_dir, cache_dir):
    relpaths = [item.relpath for item in scan_utkface(utkface_dir).items]
    torch.manual_seed(0)
    block5 = make_builder(build_backbone("none"), cache_dir)
    identity = block5._key_and_identity(utkface_dir, relpaths)[1]
    assert "layer" not in identity and "mirrored" not in identity  # caches made before these options stay valid
    torch.manual_seed(0)
    block4 = build_backbone("none", "block4")
    keys = {block5.key(utkface_dir, relpaths), make_builder(block4, cache_dir).key(utkface_dir, relpaths),
            make_builder(block4, cache_dir, mirrored=True).key(utkface_dir, relpaths),
            make_builder(block5.backbone, cache_dir, mirrored=True).key(utkface_dir, relpaths)}
    assert len(keys) == 4


def test_key_changes_with_weights_size_and_files(utkface_dir, cache_dir):
    scan = scan_utkface(utkface_dir)
    relpaths = [item.relpath for item in scan.items]
    torch.manual_seed(0)
    backbone = build_backbone("none")
    base = make_builder(backbone, cache_dir).key(utkface_dir, relpaths)
    assert make_builder(backbone, cache_dir).key(utkface_dir, relpaths) == base  # stable
    torch.manual_seed(1)
    assert make_builder(build_backbone("none"), cache_dir).key(utkface_dir, relpaths) != base
    assert make_builder(backbone, cache_dir, image_size=64).key(utkface_dir, relpaths) != base
    assert make_builder(backbone, cache_dir, precision="bf16-mixed").key(utkface_dir, relpaths) != base
    assert make_builder(backbone, cache_dir).key(utkface_dir, relpaths[:-1]) != base
    # same name, different content (size) -> different key
    (utkface_dir / relpaths[0]).write_bytes((utkface_dir / relpaths[0]).read_bytes() + b"\x00")
    assert make_builder(backbone, cache_dir).key(utkface_dir, relpaths) != base


def test_cache_is_reused_and_a_truncated_cache_is_rebuilt(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items
    backbone = build_backbone("none")
    builder = make_builder(backbone, cache_dir)
    first = builder.build(utkface_dir, items)
    reference = first.read(np.arange(len(items))).clone()
    path = first.path
    assert builder.last_build_stats["images"] == 60
    builder.last_build_stats = None
    builder.build(utkface_dir, items)
    assert builder.last_build_stats is None  # opened, not rebuilt
    del first
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    rebuilt = builder.build(utkface_dir, items)
    assert builder.last_build_stats["images"] == 60
    assert torch.equal(rebuilt.read(np.arange(len(items))), reference)


def test_an_interrupted_build_resumes_where_it_stopped(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items
    builder = make_builder(build_backbone("none"), cache_dir)
    complete = builder.build(utkface_dir, items)
    reference = complete.read(np.arange(len(items))).clone()
    paths = builder.paths(builder.key(utkface_dir, [i.relpath for i in items]))
    # Pretend a run was killed after 40 rows: a partial file, its progress, no final file.
    paths["final"].rename(paths["partial"])
    partial = np.load(paths["partial"], mmap_mode="r+")
    partial[40:] = 0
    partial.flush()
    del partial
    paths["progress"].write_text(json.dumps({"rows_done": 40, "undecodable_rows": []}))
    resumed = builder.build(utkface_dir, items)
    assert builder.last_build_stats["images"] == 20  # only the missing rows were computed
    assert torch.equal(resumed.read(np.arange(len(items))), reference)
    assert not paths["partial"].exists() and not paths["progress"].exists()


def test_bf16_cache_stores_bf16_values(utkface_dir, cache_dir):
    items = scan_utkface(utkface_dir).items[:8]
    backbone = build_backbone("none")
    cache = make_builder(backbone, cache_dir, precision="bf16-mixed").build(utkface_dir, items)
    assert cache.array.dtype == np.int16 and cache.dtype_name == "bfloat16"
    fp32 = make_builder(backbone, cache_dir).build(utkface_dir, items).read(np.arange(8))
    bf16 = cache.read(np.arange(8))
    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16, fp32, rtol=0.05, atol=0.05)


def _write_undecodable_jpeg(utkface_dir):
    """Header and end marker look fine (the scan's cheap check passes), the pixel data is garbage."""
    broken = utkface_dir / "33_0_0_20170116000000003.jpg.chip.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    return broken


def test_without_the_cache_undecodable_images_are_skipped_up_front(utkface_dir, caplog):
    broken = _write_undecodable_jpeg(utkface_dir)
    dm = UTKFaceDataModule(utkface_dir, batch_size=8, image_size=32, num_workers=0)
    dm.setup("fit")
    assert (broken.name, "cannot be decoded") in dm.scan.skipped
    used = {dm.scan.items[i].relpath for name in ("train", "val", "test") for i in dm.split[name]}
    assert broken.name not in used and len(used) == 60
    assert any("skipped 1 of 61 files" in r.getMessage() for r in caplog.records)
    for batch in dm.train_dataloader():  # and training reads every other image without stopping
        assert (batch[1] >= 0).all()


def test_undecodable_images_are_found_by_the_cache_build_and_skipped(utkface_dir, cache_dir, caplog):
    """Header and end marker look fine, the pixel data is garbage: skipped and reported, not a crash."""
    broken = _write_undecodable_jpeg(utkface_dir)
    backbone = build_backbone("none")
    dm = UTKFaceDataModule(utkface_dir, batch_size=8, image_size=32, num_workers=0, cache_dir=cache_dir)
    dm.use_feature_cache(make_builder(backbone, cache_dir))
    dm.setup("fit")
    assert (broken.name, "cannot be decoded") in dm.scan.skipped
    used = {dm.scan.items[i].relpath for name in ("train", "val", "test") for i in dm.split[name]}
    assert broken.name not in used and len(used) == 60
    assert any("skipped 1 of 61 files" in r.getMessage() for r in caplog.records)
    # opening the finished cache again remembers it
    again = UTKFaceDataModule(utkface_dir, batch_size=8, image_size=32, num_workers=0, cache_dir=cache_dir)
    builder = make_builder(backbone, cache_dir)
    again.use_feature_cache(builder)
    again.setup("fit")
    assert builder.last_build_stats is None  # opened, not rebuilt
    assert again.feature_cache.undecodable_rows == dm.feature_cache.undecodable_rows == [dm.scan.items.index(
        next(item for item in dm.scan.items if item.relpath == broken.name))]
