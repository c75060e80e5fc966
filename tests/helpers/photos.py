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


def drawn_face(size: int = 200, skin=(224, 172, 140)) -> Image.Image:
    """A simple drawn face (oval, hair, brows, eyes, nose, mouth) that OpenCV's face detector finds: photos with
    faces for tests that cannot rely on real face images being present."""
    from PIL import ImageDraw, ImageFilter

    image = Image.new("RGB", (size, size), (70, 90, 110))
    draw = ImageDraw.Draw(image)
    s = size / 200
    draw.ellipse([30 * s, 15 * s, 170 * s, 195 * s], fill=skin)
    draw.ellipse([25 * s, 5 * s, 175 * s, 70 * s], fill=(60, 40, 30))  # hair
    draw.ellipse([35 * s, 40 * s, 165 * s, 190 * s], fill=skin)
    for centre in (70, 130):
        draw.rectangle([(centre - 22) * s, 72 * s, (centre + 22) * s, 80 * s], fill=(80, 55, 40))  # brow
        draw.ellipse([(centre - 16) * s, 88 * s, (centre + 16) * s, 106 * s], fill=(255, 255, 255))
        draw.ellipse([(centre - 8) * s, 89 * s, (centre + 8) * s, 105 * s], fill=(40, 30, 25))  # iris
    draw.polygon([(100 * s, 100 * s), (88 * s, 140 * s), (112 * s, 140 * s)], fill=(200, 145, 115))  # nose
    draw.ellipse([78 * s, 150 * s, 122 * s, 168 * s], fill=(160, 70, 70))  # mouth
    return image.filter(ImageFilter.GaussianBlur(2 * s))


def two_face_photo() -> Image.Image:
    """A 640x360 photo with two drawn faces, at (40, 90) 180 px and (420, 60) 140 px."""
    photo = Image.new("RGB", (640, 360), (150, 160, 170))
    photo.paste(drawn_face(180), (40, 90))
    photo.paste(drawn_face(140, (190, 140, 110)), (420, 60))
    return photo


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
