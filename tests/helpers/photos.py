"""Photos of every file format and PIL mode, real UTKFace faces read into memory only, and a real public-domain face
from scikit-image for the face-detection tests."""

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


#: the square around the face in scikit-image's ``astronaut`` (a public-domain NASA portrait in the wheel)
ASTRONAUT_HEAD = (145, 45, 305, 205)


def real_face(side: int = 160, angle: float = 0.0, mirrored: bool = False) -> Image.Image:
    """A real face: the astronaut's head, ``side`` pixels square, turned ``angle`` degrees counter-clockwise
    (corners filled with grey). Skips the test without scikit-image (the test extra installs it)."""
    import pytest

    data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) is not installed")
    head = Image.fromarray(data.astronaut()).crop(ASTRONAUT_HEAD).resize((side, side), Image.LANCZOS)
    if mirrored:
        head = head.transpose(Image.FLIP_LEFT_RIGHT)
    return head.rotate(angle, resample=Image.BICUBIC, fillcolor=(128, 128, 128)) if angle else head


def photo_with_faces(faces, size=(640, 360), background=(150, 160, 170)) -> Image.Image:
    """A photo of ``size`` with each ``(face image, (x, y))`` pasted at its place."""
    photo = Image.new("RGB", size, background)
    for face, place in faces:
        photo.paste(face, place)
    return photo


def two_face_photo() -> Image.Image:
    """A 640x360 photo with two real faces, at (40, 90) 180 px and (420, 60) 140 px (mirrored)."""
    return photo_with_faces([(real_face(180), (40, 90)), (real_face(140, mirrored=True), (420, 60))])


def png_bomb(side: int = 30000) -> bytes:
    """A valid grayscale PNG of ``side x side`` pixels (1 bit each, all black): about 110 KB that would decode to
    ``side**2`` pixels, a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row * 1000) for _ in range(side // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
