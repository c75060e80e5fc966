"""Optional: the pipeline on real UTKFace images with the real ImageNet VGG16 weights.

Uses ``../shared/data/UTKFace.tar.gz`` and ``../shared/weights/vgg16_features_imagenet.pth`` when they are there
(CI has them; a user's clone does not) and skips otherwise. A stratified subset of about 580 images at 64 px
keeps it short.
"""

import json
import os
from collections import defaultdict

import pytest
from helpers.paths import REAL_ARCHIVE, REAL_WEIGHTS
from helpers.run_if import real_data

from project.cli.train import main
from project.data.scan import scan_utkface
from project.data.sources import resolve_data_dir

pytestmark = [pytest.mark.real_data, real_data]


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory):
    """About 580 real images (every 38th of groups 0-3, every 4th of 100-124) as symlinks in a folder."""
    cache = tmp_path_factory.mktemp("real_cache")
    root = resolve_data_dir(REAL_ARCHIVE, cache)  # exercises the real archive's extraction too
    scan = scan_utkface(root)
    assert len(scan.items) == 23_707 and not scan.skipped
    by_group = defaultdict(list)
    for item in scan.items:
        by_group[item.group].append(item)
    subset = tmp_path_factory.mktemp("real_subset") / "UTKFace"
    subset.mkdir()
    for group, items in by_group.items():
        step = 38 if group < 4 else 4
        for item in items[::step]:
            os.symlink(root / item.relpath, subset / os.path.basename(item.relpath))
    return subset, cache


def test_real_utkface_fit_beats_the_majority_class(real_subset, tmp_path):
    subset, cache = real_subset
    args = ["--data_dir", str(subset), "--image_size", "64", "--backbone_weights", str(REAL_WEIGHTS),
            "--cache_dir", str(cache), "--default_root_dir", str(tmp_path), "--max_epochs", "8",
            "--precision", "32", "--accelerator", "cpu"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "lightning_logs/version_0/test_metrics.json").read_text())
    counts = [sum(row) for row in metrics["confusion_matrix"]]
    majority = max(counts) / sum(counts)
    assert metrics["test_acc"] > majority + 0.05, (metrics["test_acc"], majority)
    assert metrics["test_f1"] > 0.25  # a majority-class guess scores about 0.13
