"""Small synthetic UTKFace-style datasets: JPEGs named like the real ones, coloured by age group."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

#: ages used for synthetic images: every group, including bin edges
SYNTHETIC_AGES = [1, 10, 24, 25, 30, 49, 50, 60, 74, 75, 80, 99, 100, 110, 124]


def face_name(age: int, index: int, race: Optional[int] = 0) -> str:
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


def pack_like_the_official_archive(source: Path, archive: Path) -> Path:
    """``archive`` (``.tar.gz``) with ``source``'s files under a top folder ``UTKFace/``, as the real one."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="UTKFace")
    return archive


def write_undecodable_jpeg(folder: Path) -> Path:
    """A file whose header and end marker look fine (the scan's cheap check passes) but whose pixels are garbage."""
    broken = folder / "33_0_0_20170116000000003.jpg.chip.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    return broken
