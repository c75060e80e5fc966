"""Lightning DDP with two CPU processes (gloo): same CLI, exact metrics, one writer for every file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.paths import REPO

from project.cli.train import main
from project.data.feature_cache import FeatureCacheBuilder
from project.data.scan import scan_utkface
from project.lit_classifier_main import LitClassifier

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def test_two_process_ddp_fit_matches_single_process_test(flags, runs, tmp_path, cache_dir, utkface_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    command = [sys.executable, str(REPO / "project" / "lit_classifier_main.py"), *flags,
               "--max_epochs", "2", "--devices", "2", "--strategy", "ddp"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    metrics_files = list((runs / "lightning_logs").glob("*/test_metrics.json"))
    assert len(metrics_files) == 1, list((runs / "lightning_logs").iterdir())
    ddp = json.loads(metrics_files[0].read_text())
    assert ddp["test_images"] == 5 and sum(map(sum, ddp["confusion_matrix"])) == 5  # nothing padded or repeated

    retest = tmp_path / "retest.json"
    assert main(flags + ["--test_only", "--ckpt_path", ddp["checkpoint"], "--metrics_json", str(retest)]) == 0
    single = json.loads(retest.read_text())
    assert single["test_acc"] == ddp["test_acc"]
    assert single["confusion_matrix"] == ddp["confusion_matrix"]
    assert single["test_loss"] == pytest.approx(ddp["test_loss"], abs=1e-6)
    # the temperature travels in the checkpoint (1.0 here: 5 validation images are too few to fit one)
    assert single["temperature"] == ddp["temperature"] == 1.0
    # the per-face records of both processes are gathered: the same errors in years and slices
    assert single["ages"]["mae"] == pytest.approx(ddp["ages"]["mae"], abs=1e-5)
    assert [(r["slice"], r["value"], r["count"], r["accuracy"]) for r in single["slices"]] == [
        (r["slice"], r["value"], r["count"], r["accuracy"]) for r in ddp["slices"]]

    # The caches the two processes built together (each extracted its own block of rows) equal single-process
    # builds byte for byte: the default recipe's two, of the faces and of their mirror images.
    built = sorted((cache_dir / "features").glob("*.npy"))
    assert len(built) == 2
    for path in built:
        stats = json.loads(path.with_suffix(".json").read_text())["stats"]
        assert stats["processes"] == 2 and stats["images"] == 60
        assert [(s["rows"], s["images"]) for s in stats["shards"]] == [([0, 32], 32), ([32, 60], 28)]
    assert not list((cache_dir / "features").glob("*.progress*")) and not list(cache_dir.glob("features/.shared-*"))
    model = LitClassifier.load_from_checkpoint(ddp["checkpoint"])
    items = scan_utkface(utkface_dir).items
    builder = FeatureCacheBuilder(model.net.backbone, "32-true", tmp_path / "single_cache", num_workers=0,
                                  progress=False)
    for path in built:
        view = "mirrored" if json.loads(path.with_suffix(".json").read_text())["mirrored"] else "original"
        fresh = builder.build(utkface_dir, items, 32, view)
        assert np.array_equal(np.load(path), np.asarray(fresh.array)), view
