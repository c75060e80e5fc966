"""Copies of one photograph: found (same bytes, re-encoded, resized, under two labels), cached, reported, handled by
each copy policy, and kept on one side of the split."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from project.common.errors import UserError
from project.config.settings import DataSettings, InputSettings
from project.data import duplicates
from project.data.check import check_data
from project.data.datamodule import UTKFaceDataModule
from project.data.scan import FaceItem, scan_utkface
from project.data.split import apply_copy_policy, load_split, new_split, stratified_split
from tests.helpers.synthetic import face_name, write_synthetic_utkface


def smooth_face(seed: int, size: int = 80) -> Image.Image:
    """A smooth random picture (a few blobs of light and colour), unlike every other seed's."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(5, 5, 3)).astype(np.uint8)
    return Image.fromarray(coarse, "RGB").resize((size, size), Image.BICUBIC)


@pytest.fixture
def copies_dir(tmp_path):
    """Twelve different faces, plus: an exact copy of face 0 under another age, face 1 re-encoded at low quality
    under the same age, and face 2 resized and brightened under another age group."""
    folder = tmp_path / "faces"
    folder.mkdir()
    ages = [5, 30, 60, 80, 12, 40, 55, 90, 20, 33, 70, 101]
    for index, age in enumerate(ages):
        smooth_face(index).save(folder / face_name(age, index), "JPEG", quality=92)
    (folder / face_name(9, 100)).write_bytes((folder / face_name(5, 0)).read_bytes())  # same bytes, age 9
    smooth_face(1).save(folder / face_name(30, 101), "JPEG", quality=35)
    brighter = smooth_face(2).resize((57, 57), Image.LANCZOS).point(lambda v: min(255, int(v * 1.1) + 8))
    brighter.save(folder / face_name(77, 102), "JPEG", quality=80)
    return folder


def _groups_by_name(copies, items):
    return sorted(sorted(items[row].relpath.split("_")[-1][:17] for row in group) for group in copies.groups)


def test_exact_and_near_copies_are_found_and_nothing_else(copies_dir):
    scan = scan_utkface(copies_dir)
    copies = duplicates.find_copies(duplicates.fingerprints(scan.root, [i.relpath for i in scan.items]))
    stamps = _groups_by_name(copies, scan.items)
    assert stamps == [["20170116000000000", "20170116000000100"], ["20170116000000001", "20170116000000101"],
                      ["20170116000000002", "20170116000000102"]]
    scores = sorted(score for _, _, score in copies.pairs)
    assert scores[-1] == 1.0 and scores[0] >= duplicates.MIN_CORRELATION
    clashes = duplicates.conflicting(copies, scan.items)
    assert len(clashes) == 2  # 5 vs 9, 60 vs 77; the re-encoded copy agrees (30 and 30)
    summary = duplicates.copies_summary(copies, scan.items)
    assert summary.startswith("3 groups of copies (6 of 15 images), 2 with conflicting ages")


def test_the_hash_is_the_dct_hash_of_imagehash():
    """``imagehash.phash``'s steps with scipy's DCT (scipy comes with the test extra's scikit-image): the same bits."""
    fft = pytest.importorskip("scipy.fft")
    thumbs = np.stack([np.asarray(smooth_face(seed, 64).convert("L")) for seed in range(6)])
    ours = duplicates.perceptual_hashes(thumbs)
    for thumb, value in zip(thumbs, ours):
        small = thumb.astype(np.float64).reshape(32, 2, 32, 2).mean(axis=(1, 3))
        low = fft.dct(fft.dct(small, axis=0), axis=1)[:8, :8]
        bits = (low > np.median(low)).flatten()
        assert int(value) == int("".join("1" if bit else "0" for bit in bits), 2)


def test_different_pictures_are_far_apart_in_hash_and_pixels():
    thumbs = np.stack([np.asarray(smooth_face(seed, 64).convert("L")) for seed in range(40)])
    hashes = duplicates.perceptual_hashes(thumbs)
    pairs = duplicates.hash_candidates(hashes, max_distance=64)
    assert len(pairs) == 40 * 39 // 2  # every pair, each once
    assert np.all(duplicates.correlations(thumbs, pairs) < duplicates.MIN_CORRELATION)
    assert np.array_equal(duplicates.correlations(thumbs, np.array([[3, 3]])), [pytest.approx(1.0)])


def test_copies_are_cached_by_the_files(copies_dir, tmp_path, monkeypatch):
    scan = scan_utkface(copies_dir)
    first = duplicates.copies_in(scan.root, scan.items, tmp_path / "cache")
    monkeypatch.setattr(duplicates, "fingerprints", lambda *a, **k: pytest.fail("the cache was not used"))
    assert duplicates.copies_in(scan.root, scan.items, tmp_path / "cache").groups == first.groups
    (copies_dir / face_name(44, 200)).write_bytes((copies_dir / face_name(60, 2)).read_bytes())
    monkeypatch.undo()
    changed = scan_utkface(copies_dir)
    assert sorted(map(len, duplicates.copies_in(changed.root, changed.items, tmp_path / "cache").groups)) == [2, 2, 3]


def _conflicting_items():
    """Rows 0-1: one photo as 27 and 37; rows 2-4: one photo as 60, 70, 62; rows 5-6: one photo as 30 twice."""
    ages = [27, 37, 60, 70, 62, 30, 30, 10, 45, 80]
    return [FaceItem(f"{i}.jpg", age, min(age // 25, 4)) for i, age in enumerate(ages)], [[0, 1], [2, 3, 4], [5, 6]]


@pytest.mark.parametrize("policy, kept, left_out", [
    ("drop", [5, 7, 8, 9], {0: "copy with another age", 1: "copy with another age", 2: "copy with another age",
                            3: "copy with another age", 4: "copy with another age", 6: "copy of a file kept"}),
    ("median", [0, 4, 5, 7, 8, 9], {1: "copy with another age", 2: "copy with another age",
                                    3: "copy with another age", 6: "copy of a file kept"}),
    ("keep", list(range(10)), {}),
])
def test_copy_policies(policy, kept, left_out):
    items, groups = _conflicting_items()
    rows, units, why = apply_copy_policy(items, np.arange(10), groups, policy)
    assert rows.tolist() == kept
    assert why == left_out
    unit = dict(zip(rows.tolist(), units.tolist()))
    if policy == "keep":
        assert unit[0] == unit[1] and unit[2] == unit[3] == unit[4] and len(set(unit.values())) == 6


def test_an_unknown_policy_is_a_one_line_error():
    items, groups = _conflicting_items()
    with pytest.raises(UserError, match="unknown copy policy 'mean'"):
        apply_copy_policy(items, np.arange(10), groups, "mean")


def test_single_images_split_exactly_as_release_0_4_did():
    """Release 0.4.0's per-group rule, written out: a seeded permutation, then round(n * fraction) for test and of the
    rest for validation."""
    groups = np.repeat(np.arange(5), [700, 1200, 400, 100, 30])
    rng = np.random.default_rng(5)
    expected = {"train": [], "val": [], "test": []}
    for group in range(5):
        members = rng.permutation(np.flatnonzero(groups == group))
        n_test = int(round(len(members) * 0.1))
        n_val = int(round((len(members) - n_test) * 0.1))
        expected["test"] += members[:n_test].tolist()
        expected["val"] += members[n_test:n_test + n_val].tolist()
        expected["train"] += members[n_test + n_val:].tolist()
    for sizes in (None, np.ones(len(groups), dtype=int)):
        split = stratified_split(groups, seed=5, sizes=sizes)
        assert all(split[name].tolist() == sorted(expected[name]) for name in expected)


@pytest.mark.parametrize("seed", [0, 1, 42, 7])
def test_the_grouped_split_keeps_copies_together(seed):
    ages = np.random.default_rng(seed).integers(0, 100, 600)
    ages[:300] = np.repeat(ages[:300:3], 3)  # copies share their age
    items = [FaceItem(f"{i:04d}.jpg", int(age), int(age) // 25) for i, age in enumerate(ages)]
    unit_of = np.arange(600)
    for start in range(0, 300, 3):  # 100 groups of three copies
        unit_of[start:start + 3] = start
    split = new_split(items, np.arange(600), seed, unit_of)
    side = np.empty(600, dtype=object)
    for name, rows in split.indices.items():
        side[rows] = name
    assert all(len(set(side[start:start + 3])) == 1 for start in range(0, 300, 3))
    assert sorted(np.concatenate(list(split.indices.values())).tolist()) == list(range(600))
    assert 45 <= len(split.indices["test"]) <= 75 and 40 <= len(split.indices["val"]) <= 70  # ~10 %, whole groups
    for name in ("test", "val"):  # stratified: every age group present in about its share
        rows = split.indices[name]
        share = np.bincount([items[row].group for row in rows], minlength=4)[:4] / len(rows)
        overall = np.bincount([item.group for item in items], minlength=4)[:4] / 600
        assert np.all(np.abs(share - overall) < 0.05), (name, share, overall)


def test_a_split_json_of_release_0_4_loads_as_before(tmp_path):
    """No ``left_out``, ``split`` or ``copy_labels`` keys: validation and test as listed, every other file trains."""
    items = [FaceItem(f"{i}.jpg", 30, 1) for i in range(10)]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"seed": 42, "groups": [], "counts": {}, "val": ["2.jpg"], "test": ["5.jpg", "7.jpg"]}))
    split = load_split(path, items, np.arange(10), tmp_path)
    assert split.indices["train"].tolist() == [0, 1, 3, 4, 6, 8, 9]
    assert split.indices["test"].tolist() == [5, 7]


def test_a_grouped_split_json_loads_back_without_its_left_out_files(tmp_path):
    items, groups = _conflicting_items()
    rows, units, why = apply_copy_policy(items, np.arange(10), groups, "drop")
    split = new_split(items, rows, 3, units)
    split.left_out = tuple(items[row].relpath for row in sorted(why))
    path = split.save(tmp_path / "split.json", items, seed=3)
    again = load_split(path, items, np.arange(10), tmp_path)
    assert all(np.array_equal(again.indices[name], split.indices[name]) for name in split.indices)
    assert json.loads(path.read_text())["left_out"] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "6.jpg"]


def _datamodule(data_dir, cache_dir, **settings):
    data = DataSettings(data_dir=data_dir, cache_dir=cache_dir, batch_size=8, seed=0, num_workers=0, split_file=None,
                        strict_data=False, feature_cache=False, **settings)
    return UTKFaceDataModule(data, InputSettings(image_size=32, feature_layer="block4", mirror=False))


def test_a_run_reports_its_copies_and_splits_them_honestly(utkface_dir, cache_dir, tmp_path):
    first = sorted(utkface_dir.iterdir())[0]
    (utkface_dir / face_name(61, 900)).write_bytes(first.read_bytes())  # a copy under another age
    (utkface_dir / face_name(int(first.name.split("_")[0]), 901)).write_bytes(first.read_bytes())
    datamodule = _datamodule(utkface_dir, cache_dir, copy_labels="median")
    datamodule.setup("fit")
    images = len(datamodule.scan.items)
    assert datamodule.copies_summary().startswith(f"1 group of copies (3 of {images} images), 1 with conflicting ages")
    assert datamodule.copies_summary().endswith("--copy_labels median left out 2 files")
    report = list(csv.DictReader(open(datamodule.save_duplicates(tmp_path / "duplicates.csv"))))
    assert sorted(row["kept"] for row in report) == ["no: copy of a file kept", "no: copy with another age", "yes"]
    names = {item.relpath for name in ("train", "val", "test") for item in datamodule.split_items(name)}
    assert len(names & {first.name, face_name(61, 900), face_name(int(first.name.split("_")[0]), 901)}) == 1
    random = _datamodule(utkface_dir, cache_dir, split="random")
    random.setup("fit")
    assert random.copies is None and random.save_duplicates(tmp_path / "none.csv") is None
    assert sum(len(random.split.indices[name]) for name in ("train", "val", "test")) == images


def test_check_data_reports_without_training(copies_dir, cache_dir, tmp_path):
    (copies_dir / "broken.jpg").write_bytes(b"not an image")
    lines = check_data(copies_dir, cache_dir, tmp_path / "report", seed=0, copy_labels="drop", num_workers=0)
    text = "\n".join(lines)
    assert "15 usable images of 16 files" in text
    assert "3 groups of copies (6 of 15 images), 2 with conflicting ages" in text
    assert "leaving out 5 copies" in text  # both copies of two conflicting groups, one of the agreeing pair
    rows = list(csv.DictReader(open(tmp_path / "report" / "duplicates.csv")))
    assert len(rows) == 6 and {row["ages_agree"] for row in rows} == {"yes", "no"}
    assert "broken.jpg" in (tmp_path / "report" / "skipped_files.txt").read_text()


def test_a_synthetic_set_has_no_copies(tmp_path):
    write_synthetic_utkface(tmp_path / "set", per_group=8)
    scan = scan_utkface(tmp_path / "set")
    assert duplicates.find_copies(duplicates.fingerprints(scan.root, [i.relpath for i in scan.items])).groups == []


def test_check_data_flag_of_the_training_command(copies_dir, cache_dir, tmp_path, capsys):
    from project.cli.train import main

    assert main(["--check_data", "--data_dir", str(copies_dir), "--cache_dir", str(cache_dir),
                 "--default_root_dir", str(tmp_path / "runs"), "--num_workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 groups of copies" in out and (tmp_path / "runs" / "data_check" / "duplicates.csv").is_file()
    assert not (tmp_path / "runs" / "lightning_logs").exists()  # nothing trained
    with pytest.raises(SystemExit) as exit_info:
        main(["--check_data", "--data_dir", str(tmp_path / "missing"), "--default_root_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--check_data needs --data_dir PATH" in capsys.readouterr().err


def test_the_copies_benchmark_finds_every_pair_and_no_straddling(copies_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "duplicates.py"
    out = subprocess.run([sys.executable, str(script), "--data_dir", str(copies_dir), "--seeds", "0",
                          "--out", str(tmp_path / "copies.md")], capture_output=True, text=True, check=True).stdout
    assert "(brute force over all pairs): 3; found by the hash step and confirmation: 3 (missed: 0)" in out
    grouped = [line for line in out.splitlines() if line.startswith("| grouped")]
    assert len(grouped) == 3 and all(line.split(" | ")[4:7] == ["0", "0", "0"] for line in grouped)


def test_check_data_reports_a_set_too_small_to_split(tmp_path, cache_dir):
    folder = tmp_path / "tiny"
    folder.mkdir()
    smooth_face(0).save(folder / face_name(30, 0), "JPEG")
    (folder / face_name(40, 1)).write_bytes((folder / face_name(30, 0)).read_bytes())
    lines = check_data(folder, cache_dir, tmp_path / "report", num_workers=0)
    assert lines[-1].startswith("a new run could not split this set: too few images to split")
    assert (tmp_path / "report" / "duplicates.csv").is_file()
