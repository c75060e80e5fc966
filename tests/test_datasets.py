"""Name parsing, scanning odd folders, the stratified split, archives and the DataModule."""

import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import face_name, make_face_image, write_synthetic_utkface
from project.datasets.utkface import (
    UTKFaceDataModule,
    check_image_file,
    extraction_target,
    parse_age,
    resolve_data_dir,
    scan_utkface,
    stratified_split,
)
from project.errors import UserError


@pytest.mark.parametrize(
    "name, age",
    [
        ("25_0_1_20170116174525125.jpg.chip.jpg", 25),
        ("39_1_20170116174525125.jpg.chip.jpg", 39),  # the real files without a race field
        (" 61_1_20170109142408075.jpg.chip.jpg", 61),  # stray leading space
        ("7 _0_2_20170109142408075.jpg.chip.jpg", 7),  # stray space inside the age field
        ("116_1_0_20170120134921760.jpg.chip.jpg", 116),
        ("notes.txt", None),
        ("abc_1_0_2017.jpg", None),
        ("25.jpg", None),
    ],
)
def test_parse_age(name, age):
    assert parse_age(name) == age


def test_scan_skips_and_reports_what_cannot_be_used(tmp_path, utkface_dir):
    rng = np.random.default_rng(1)
    make_face_image(30, rng).save(utkface_dir / face_name(39, 900, race=None), "JPEG")
    make_face_image(30, rng).save(utkface_dir / (" " + face_name(30, 901)), "JPEG")
    (utkface_dir / "notes.txt").write_text("not an image")
    (utkface_dir / ("._" + face_name(20, 902))).write_bytes(b"\x00\x05\x16\x07")
    make_face_image(30, rng).save(utkface_dir / face_name(130, 903), "JPEG")  # age outside the bins
    (utkface_dir / face_name(40, 904)).write_bytes(b"")  # empty
    good = utkface_dir / face_name(40, 905)
    make_face_image(40, rng).save(good, "JPEG")
    (utkface_dir / face_name(41, 906)).write_bytes(good.read_bytes()[:300])  # truncated
    (utkface_dir / face_name(42, 907)).write_bytes(b"this is text, not a JPEG")
    os.symlink(tmp_path / "missing.jpg", utkface_dir / face_name(43, 908))  # dangling link

    scan = scan_utkface(utkface_dir)

    names = {Path(item.relpath).name for item in scan.items}
    assert face_name(39, 900, race=None) in names
    assert " " + face_name(30, 901) in names
    assert len(scan.items) == 60 + 3
    reasons = dict(scan.skipped)
    assert reasons["notes.txt"] == "not an image file name"
    assert reasons["._" + face_name(20, 902)] == "macOS metadata file"
    assert reasons[face_name(130, 903)] == "age 130 outside 0-124"
    assert reasons[face_name(40, 904)] == "empty file"
    assert "truncated" in reasons[face_name(41, 906)]
    assert reasons[face_name(42, 907)] == "not a JPEG or PNG image"
    assert "dangling" in reasons[face_name(43, 908)] or "unreadable" in reasons[face_name(43, 908)]
    summary = scan.skipped_summary()
    assert summary.startswith(f"skipped {len(scan.skipped)} of {len(scan.items) + len(scan.skipped)} files")
    assert "\n" not in summary


def test_check_image_file_accepts_png(tmp_path):
    path = tmp_path / "x.png"
    make_face_image(30, np.random.default_rng(0)).save(path, "PNG")
    assert check_image_file(path) is None


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


def test_archive_is_extracted_once_and_half_extraction_is_redone(utkface_archive, cache_dir):
    target = extraction_target(utkface_archive, cache_dir)
    assert cache_dir in target.parents  # never beside the user's archive
    leftover = target.parent / f".{target.name}.partial-99999"
    leftover.mkdir(parents=True)
    (leftover / "half.jpg").write_bytes(b"\xff\xd8\xff")
    root = resolve_data_dir(utkface_archive, cache_dir)
    assert root == target and not leftover.exists()
    assert len(scan_utkface(root).items) == 60
    marker = root / "UTKFace" / "marker"
    marker.write_text("x")
    assert resolve_data_dir(utkface_archive, cache_dir) == root
    assert marker.exists()  # not extracted twice


def test_corrupt_archive_is_a_user_error(tmp_path, cache_dir):
    archive = tmp_path / "UTKFace.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(500))
    with pytest.raises(UserError, match="not a readable tar archive"):
        resolve_data_dir(archive, cache_dir)
    assert not extraction_target(archive, cache_dir).exists()


def test_archive_cannot_write_outside_its_folder(tmp_path, cache_dir):
    archive = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../../escaped.txt")
    with pytest.raises(UserError):
        resolve_data_dir(archive, cache_dir)
    assert not (cache_dir / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_datamodule_with_archive_and_split_file(utkface_archive, cache_dir, tmp_path):
    dm = UTKFaceDataModule(utkface_archive, batch_size=4, image_size=32, seed=7, num_workers=0, cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.split[n]) for n in ("train", "val", "test")] == [50, 5, 5]
    assert dm.class_counts()["test"] == [1, 1, 1, 1, 1]
    images, labels, ages = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype.is_floating_point is False
    assert all(age // 25 == label for age, label in zip(ages.tolist(), labels.tolist()))
    split_path = dm.save_split(tmp_path / "split.json")
    saved = json.loads(split_path.read_text())
    assert saved["seed"] == 7 and len(saved["test"]) == 5

    other_seed = UTKFaceDataModule(utkface_archive, image_size=32, seed=8, cache_dir=cache_dir, split_file=split_path)
    other_seed.setup("test")
    assert [i.relpath for i in other_seed.split_items("test")] == saved["test"]


def test_datamodule_errors_are_one_line(tmp_path, cache_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no UTKFace images"):
        UTKFaceDataModule(empty, cache_dir=cache_dir).setup("fit")
    few = tmp_path / "few"
    write_synthetic_utkface(few, per_group=1)
    with pytest.raises(UserError, match="too few images"):
        UTKFaceDataModule(few, cache_dir=cache_dir).setup("fit")
    with pytest.raises(UserError, match="does not exist"):
        UTKFaceDataModule(tmp_path / "nowhere", cache_dir=cache_dir).setup("fit")


def test_strict_data_turns_skips_into_an_error(utkface_dir, cache_dir):
    (utkface_dir / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="--strict_data: skipped 1 of 61 files: notes.txt"):
        UTKFaceDataModule(utkface_dir, cache_dir=cache_dir, strict_data=True).setup("fit")
