"""Shared fixtures: small synthetic UTKFace-style datasets in a temp dir, private caches, fast run flags.

Helpers live in ``tests/helpers`` and are imported from there by the tests that use them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest
from helpers.config import fast_flags
from helpers.synthetic import pack_like_the_official_archive, write_synthetic_utkface

os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture
def utkface_dir(tmp_path: Path) -> Path:
    """A folder of 60 synthetic UTKFace images (12 per group)."""
    folder = tmp_path / "UTKFace"
    write_synthetic_utkface(folder)
    return folder


@pytest.fixture
def utkface_archive(tmp_path: Path) -> Path:
    """The synthetic set packed like the official archive: ``UTKFace.tar.gz`` with a top folder ``UTKFace/``."""
    source = tmp_path / "src" / "UTKFace"
    write_synthetic_utkface(source)
    return pack_like_the_official_archive(source, tmp_path / "archive" / "UTKFace.tar.gz")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A private cache dir so tests never read or write the user's cache."""
    return tmp_path / "cache"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Where a test's training runs go (``runs/lightning_logs/version_N``)."""
    return tmp_path / "runs"


@pytest.fixture
def flags(utkface_dir: Path, cache_dir: Path, runs: Path) -> List[str]:
    """Fast training flags on the synthetic set (see ``helpers.config.fast_flags``); add ``--max_epochs`` etc."""
    return fast_flags(utkface_dir, cache_dir, runs)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The run folder of a one-epoch default-recipe fit on 60 synthetic 40 px images (32 px model, random
    backbone), trained once per test session and shared read-only by the prediction and plot tests. Its 5
    validation images are allowed to fit the calibrations (normally 100 are needed), so it predicts ages with
    intervals."""
    from helpers.config import run_dir, settings_for

    from project.core import calibration
    from project.training.run import train

    root = tmp_path_factory.mktemp("trained")
    write_synthetic_utkface(root / "UTKFace")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "MIN_CALIBRATION_ITEMS", 1)
        train(settings_for(fast_flags(root / "UTKFace", root / "cache", root / "runs", "--max_epochs", "1")))
    return run_dir(root / "runs")


@pytest.fixture(scope="session")
def checkpoint(trained_run: Path) -> Path:
    """The best checkpoint of :func:`trained_run`."""
    return next((trained_run / "checkpoints").glob("best-*.ckpt"))


@pytest.fixture(scope="session")
def predictor(checkpoint: Path):
    """An ``AgeGroupPredictor`` of :func:`checkpoint`."""
    from project.inference.predictor import AgeGroupPredictor

    return AgeGroupPredictor.from_checkpoint(checkpoint)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """One image per file format and PIL mode, a corrupt JPEG and a text file (``helpers.photos``)."""
    from helpers.photos import write_photo_dir

    return write_photo_dir(tmp_path_factory.mktemp("photos"))
