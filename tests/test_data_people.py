"""The same person in several photos (``--group_people``): dlib descriptors, groups closed under the links, the
guard against chaining a whole dataset into one person, and the split keeping each person on one side."""

import numpy as np
import pytest
from PIL import Image

from project.common.errors import UserError
from project.config.settings import DataSettings, InputSettings
from project.data import people
from project.data.datamodule import UTKFaceDataModule
from tests.helpers.photos import real_face


def test_one_person_in_other_photos_is_close_and_another_is_far(tmp_path):
    pytest.importorskip("dlib", reason="the faces extra is not installed")
    import matplotlib.cbook

    real_face(200).save(tmp_path / "a.jpg", quality=92)
    real_face(160, angle=6).resize((200, 200)).save(tmp_path / "b.jpg", quality=60)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = Image.open(handle).convert("RGB")
    hopper.crop((95, 70, 415, 390)).resize((200, 200)).save(tmp_path / "c.jpg")
    (tmp_path / "d.jpg").write_bytes(b"not an image")
    table = np.stack([people.describe(tmp_path / name) if name != "d.jpg" else np.full(128, np.nan)
                      for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")])
    assert people.describe(tmp_path / "d.jpg") is None
    assert np.linalg.norm(table[0] - table[1]) < people.SAME_PERSON_DISTANCE < np.linalg.norm(table[0] - table[2])
    strangers = np.random.default_rng(0).normal(size=(3, 128)) * 10  # far from everyone
    assert people.same_person_groups(np.concatenate([table, strangers]), 0.6) == [[0, 1]]


def test_groups_are_closed_under_the_links_and_chaining_is_refused():
    points = np.zeros((10, 128), dtype=np.float32)
    points[:, 0] = [0, 0.5, 1.0, 5, 5.2, 10, 20, 30, 40, 50]  # 0-1-2 chain at 0.5, 3-4 at 0.2
    assert people.same_person_groups(points, 0.6) == [[0, 1, 2], [3, 4]]
    assert people.same_person_groups(points, 0.3) == [[3, 4]]
    with pytest.raises(UserError, match="chain more than 5 of 10 images into one person"):
        people.same_person_groups(points, 5.5)
    assert len(people.same_person_groups(points, 4.5)[0]) == 5  # half of the images: still splittable
    assert "2 people with several photos (5 of 10 images, the most 3)" in people.people_summary(
        [[0, 1, 2], [3, 4]], 10, 0.6)


def test_the_split_keeps_each_person_on_one_side(utkface_dir, cache_dir, monkeypatch):
    """The wiring, with the descriptors replaced: rows 0-9 are one person, every other row someone else."""
    def fake_descriptors(root, items, cache, workers):
        table = np.random.default_rng(0).normal(size=(len(items), 128)).astype(np.float32) * 10
        table[:10] = 0
        return table

    monkeypatch.setattr(people, "descriptors", fake_descriptors)
    for seed in range(4):
        data = DataSettings(data_dir=utkface_dir, cache_dir=cache_dir, batch_size=8, seed=seed, num_workers=0,
                            split_file=None, strict_data=False, feature_cache=False, group_people=0.6)
        datamodule = UTKFaceDataModule(data, InputSettings(image_size=32, feature_layer="block4", mirror=False))
        datamodule.setup("fit")
        sides = {name for name, rows in datamodule.split.indices.items() for row in rows.tolist() if row < 10}
        assert len(sides) == 1


def test_the_people_benchmark_runs(tmp_path):
    pytest.importorskip("dlib", reason="the faces extra is not installed")
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers.synthetic import write_synthetic_utkface

    write_synthetic_utkface(tmp_path / "set", per_group=3)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "people.py"
    out = subprocess.run([sys.executable, str(script), "--data_dir", str(tmp_path / "set"), "--thresholds", "0.3",
                          "--workers", "1"], capture_output=True, text=True, check=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}).stdout
    assert "15 images; descriptors in" in out and "| 0.3 | " in out
    assert list((tmp_path / "cache" / "age-group-classifier" / "people").glob("descriptors-*.npy"))
