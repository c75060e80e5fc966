"""Photos of every file format and PIL mode, and real UTKFace faces read into memory only."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from helpers.paths import REAL_ARCHIVE

IMAGE_MODES = ["rgb.jpg", "rgb.png", "rgb.webp", "rgb.bmp", "palette.gif", "gray_L.png", "palette_P.png",
               "rgba.png", "gray_alpha_LA.png", "cmyk.jpg", "sixteen_bit.png", "exif_rotated.jpg"]


def pattern(width: int = 48, height: int = 32) -> np.ndarray:
    """A non-square, non-symmetric RGB pattern, so a rotation changes what the model sees."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)


def write_photo_dir(folder: Path) -> Path:
    """One image per file format and PIL mode (:data:`IMAGE_MODES`), a corrupt JPEG and a text file."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(pattern())
    rgb.save(folder / "rgb.jpg", quality=95)
    rgb.save(folder / "rgb.png")
    rgb.save(folder / "rgb.webp")
    rgb.save(folder / "rgb.bmp")
    rgb.convert("P").save(folder / "palette.gif")
    rgb.convert("L").save(folder / "gray_L.png")
    rgb.convert("P").save(folder / "palette_P.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    rgb.convert("LA").save(folder / "gray_alpha_LA.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(pattern()[:, :, 0].astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels must be turned 90 degrees clockwise to be upright
    rgb.save(folder / "exif_rotated.jpg", quality=95, exif=exif)
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(600))
    (folder / "notes.txt").write_text("not an image")
    return folder


def utkface_faces(count: int) -> List[Image.Image]:
    """The first ``count`` real UTKFace images, read into memory only (never written into the repository)."""
    faces = []
    with tarfile.open(REAL_ARCHIVE) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                faces.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
            if len(faces) == count:
                return faces
    return faces
