"""Shared fixtures: small synthetic UTKFace-style datasets generated in a temp dir."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

# Keep tests single-process-friendly and quiet; never touch the user's cache.
os.environ.setdefault("PYTHONHASHSEED", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_ARCHIVE = SHARED / "data" / "UTKFace.tar.gz"
REAL_WEIGHTS = SHARED / "weights" / "vgg16_features_imagenet.pth"

#: ages used for synthetic images: every group, including bin edges
SYNTHETIC_AGES = [1, 10, 24, 25, 30, 49, 50, 60, 74, 75, 80, 99, 100, 110, 124]


def face_name(age: int, index: int, race: int | None = 0) -> str:
    """A UTKFace-style name; ``race=None`` drops the race field like three real files do."""
    stamp = f"20170116{index:09d}"
    middle = f"{index % 2}_{race}_" if race is not None else f"{index % 2}_"
    return f"{age}_{middle}{stamp}.jpg.chip.jpg"


def make_face_image(age: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A synthetic 'face' whose colour depends on the age group, so a model can learn something."""
    group = min(age // 25, 4)
    base = np.array([40 + 50 * group, 200 - 40 * group, 90 + 30 * (group % 2)], dtype=np.float64)
    noise = rng.normal(0, 25, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_synthetic_utkface(folder: Path, per_group: int = 12, seed: int = 0, size: int = 40) -> List[Path]:
    """``per_group`` images for each of the 5 groups (ages cycling over the bin edges), as real-style JPEGs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    index = 0
    for group in range(5):
        ages = [a for a in SYNTHETIC_AGES if a // 25 == group]
        for k in range(per_group):
            age = ages[k % len(ages)]
            path = folder / face_name(age, index)
            make_face_image(age, rng, size).save(path, "JPEG", quality=90)
            paths.append(path)
            index += 1
    return paths


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
    archive = tmp_path / "archive" / "UTKFace.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="UTKFace")
    return archive


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A private cache dir so tests never read or write the user's cache."""
    return tmp_path / "cache"


@pytest.fixture
def cli_args(utkface_dir: Path, cache_dir: Path, tmp_path: Path) -> Dict[str, List[str]]:
    """Fast CLI flags: tiny images, random backbone, few epochs, everything inside tmp_path."""
    base = [
        "--data_dir", str(utkface_dir), "--image_size", "32", "--backbone_weights", "none",
        "--cache_dir", str(cache_dir), "--default_root_dir", str(tmp_path / "runs"),
        "--num_workers", "0", "--batch_size", "8", "--accelerator", "cpu", "--precision", "32",
    ]
    return {"base": base}
