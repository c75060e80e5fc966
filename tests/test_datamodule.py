"""UTKFaceDataModule: everything through its constructor; batches of images or cached features; the split."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.models import random_backbone
from helpers.synthetic import write_synthetic_utkface, write_undecodable_jpeg

from project.common.errors import UserError
from project.config.settings import DataSettings, InputSettings
from project.data.datamodule import UTKFaceDataModule
from project.data.feature_cache import FeatureCacheBuilder

PLAIN = InputSettings(image_size=32, feature_layer="block5", mirror=False)
MIRROR = InputSettings(image_size=32, feature_layer="block4", mirror=True)


def data_settings(data_dir, cache_dir, **overrides) -> DataSettings:
    settings = DataSettings(data_dir=Path(data_dir), cache_dir=Path(cache_dir), batch_size=8, seed=42, num_workers=0,
                            split_file=None, strict_data=False, feature_cache=False)
    return replace(settings, **overrides)


def cached(data_dir, cache_dir, model_input=PLAIN, **overrides) -> UTKFaceDataModule:
    builder = FeatureCacheBuilder(random_backbone(model_input.feature_layer), "32-true", cache_dir / "features",
                                  num_workers=0, progress=False)
    return UTKFaceDataModule(data_settings(data_dir, cache_dir, feature_cache=True, **overrides), model_input, builder)


def test_image_batches_and_the_split_file(utkface_archive, cache_dir, tmp_path):
    dm = UTKFaceDataModule(data_settings(utkface_archive, cache_dir, batch_size=4, seed=7), PLAIN)
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.split.indices[n]) for n in ("train", "val", "test")] == [50, 5, 5]
    assert dm.class_counts()["test"] == [1, 1, 1, 1, 1]
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 1, 3, 32, 32) and batch["group"].dtype == torch.long
    assert set(batch) == {"images", "group", "age", "gender", "ethnicity"}
    assert all(age // 25 == group for age, group in zip(batch["age"].tolist(), batch["group"].tolist()))
    saved = json.loads(dm.save_split(tmp_path / "split.json").read_text())
    assert saved["seed"] == 7 and len(saved["test"]) == 5

    other_seed = UTKFaceDataModule(data_settings(utkface_archive, cache_dir, seed=8,
                                                 split_file=tmp_path / "split.json"), PLAIN)
    other_seed.setup("test")
    assert [i.relpath for i in other_seed.split_items("test")] == saved["test"]


def test_mirror_images_train_one_view_and_evaluate_two(utkface_dir, cache_dir):
    uncached = UTKFaceDataModule(data_settings(utkface_dir, cache_dir), MIRROR)
    for dm in (uncached, cached(utkface_dir, cache_dir, MIRROR)):
        dm.setup("fit")
        key = "features" if dm.caches else "images"
        assert next(iter(dm.train_dataloader()))[key].shape[:2] == (8, 1)
        assert next(iter(dm.val_dataloader()))[key].shape[:2] == (5, 2)
    assert sorted(dm.caches) == ["mirrored", "original"]


def test_a_batch_of_one_is_never_trained_on(utkface_dir, cache_dir):
    """BatchNorm cannot train on one item: 50 training images in batches of 7 drop the last one, and only it."""
    dm = UTKFaceDataModule(data_settings(utkface_dir, cache_dir, batch_size=7), PLAIN)
    dm.setup("fit")
    assert len(dm.split.indices["train"]) == 50 and [len(b["group"]) for b in dm.train_dataloader()] == [7] * 7
    dm = UTKFaceDataModule(data_settings(utkface_dir, cache_dir, batch_size=8), PLAIN)
    dm.setup("fit")
    assert [len(b["group"]) for b in dm.train_dataloader()] == [8] * 6 + [2]


@pytest.mark.parametrize("use_cache", [False, True], ids=["decode check", "cache build"])
def test_undecodable_images_are_skipped_and_reported_up_front(utkface_dir, cache_dir, caplog, use_cache):
    broken = write_undecodable_jpeg(utkface_dir)
    dm = cached(utkface_dir, cache_dir) if use_cache else UTKFaceDataModule(data_settings(utkface_dir, cache_dir),
                                                                            PLAIN)
    dm.setup("fit")
    assert (broken.name, "cannot be decoded") in dm.scan.skipped
    used = {item.relpath for name in ("train", "val", "test") for item in dm.split_items(name)}
    assert broken.name not in used and len(used) == 60
    assert any("skipped 1 of 61 files" in r.getMessage() for r in caplog.records)
    assert sum(len(batch["group"]) for batch in dm.train_dataloader()) == 50  # training reads the rest


def test_datamodule_errors_are_one_line(tmp_path, cache_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no UTKFace images"):
        UTKFaceDataModule(data_settings(empty, cache_dir), PLAIN).setup("fit")
    few = tmp_path / "few"
    write_synthetic_utkface(few, per_group=1)
    for path in sorted(few.iterdir())[3:]:
        path.unlink()
    with pytest.raises(UserError, match="too few images to split: 3 usable"):
        UTKFaceDataModule(data_settings(few, cache_dir), PLAIN).setup("fit")


def test_strict_data_turns_skips_into_an_error(utkface_dir, cache_dir):
    (utkface_dir / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="--strict_data: skipped 1 of 61 files: notes.txt"):
        UTKFaceDataModule(data_settings(utkface_dir, cache_dir, strict_data=True), PLAIN).setup("fit")


def test_the_cache_setting_and_the_builder_agree(utkface_dir, cache_dir):
    with pytest.raises(ValueError, match="feature_cache"):
        UTKFaceDataModule(data_settings(utkface_dir, cache_dir, feature_cache=True), PLAIN)


class FakeStrategy:
    """What ``_extraction_shard`` asks of a DDP strategy, for one process of a job (no other process runs)."""

    def __init__(self, global_rank: int) -> None:
        self.global_rank = global_rank
        self.barriers = 0

    def broadcast(self, value):
        return "nonce" if self.global_rank else value  # the first process's value reaches every process

    def barrier(self, *args) -> None:
        self.barriers += 1

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision


class FakeTrainer:
    def __init__(self, global_rank: int, local_rank: int, world_size: int, num_devices: int) -> None:
        self.global_rank, self.local_rank = global_rank, local_rank
        self.world_size, self.num_devices = world_size, num_devices
        self.strategy = FakeStrategy(global_rank)


@pytest.mark.parametrize("global_rank,local_rank,expected", [
    (0, 0, (0, 4)),  # the first process sees its own probe file: one build shared by all 4 processes
    (3, 1, (1, 2)),  # a process on another node that does not see it: its node's 2 processes build a copy
])
def test_ddp_processes_share_a_build_per_cache_folder(utkface_dir, cache_dir, global_rank, local_rank, expected):
    datamodule = cached(utkface_dir, cache_dir)
    datamodule.trainer = FakeTrainer(global_rank, local_rank, world_size=4, num_devices=2)
    shard = datamodule._extraction_shard()
    assert (shard.index, shard.count) == expected
    assert shard.barrier == datamodule.trainer.strategy.barrier
    assert not list((cache_dir / "features").glob(".shared-*"))  # the probe is removed


def test_a_single_process_builds_alone(utkface_dir, cache_dir):
    datamodule = cached(utkface_dir, cache_dir)
    datamodule.trainer = FakeTrainer(0, 0, world_size=1, num_devices=1)
    assert datamodule._extraction_shard() is None
