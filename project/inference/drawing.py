"""Annotated copies of photos: each face's box and its predicted group and probability drawn on the image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from project.inference.predictor import Prediction


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _label_text(prediction: Prediction) -> str:
    """``25-49 (64%) · 31 y``: the group, its probability, and the age when the model gives one."""
    if not prediction.ok:
        return prediction.error
    text = f"{prediction.group} ({prediction.confidence:.0%})"
    return text if prediction.age is None else f"{text} \u00b7 {prediction.age:.0f} y"


def _draw_label(draw: ImageDraw.ImageDraw, text: str, anchor_xy: Tuple[int, int], max_width: int,
                font_size: int, below: bool) -> None:
    """White text on a black box at ``anchor_xy`` (box above the point unless ``below``), shrunk to fit."""
    font = _font(font_size)
    while font_size > 6 and draw.textlength(text, font=font) > max_width:
        font_size -= 1
        font = _font(font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, font_size // 4)
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = anchor_xy
    y = y if below else max(0, y - height)
    draw.rectangle([x, y, x + width, y + height], fill=(0, 0, 0))
    draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)


def annotate(image: Image.Image, predictions: Sequence[Prediction]) -> Image.Image:
    """A copy of ``image`` (same size) with each prediction's group and probability (and face box) drawn on it."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    short_side = min(out.size)
    font_size = max(10, round(short_side * 0.045))  # ~45 px on a 1000 px photo, still legible at 200 px
    for prediction in predictions:
        if prediction.face_box is None:
            _draw_label(draw, _label_text(prediction), (0, 0), out.width, font_size, below=True)
            continue
        x, y, w, h = prediction.face_box
        draw.rectangle([x, y, x + w, y + h], outline=(255, 220, 0), width=max(2, short_side // 200))
        _draw_label(draw, _label_text(prediction), (x, y), max(w, out.width - x), font_size, below=y < font_size)
    return out


def save_image(image: Image.Image, path: Path) -> None:
    """Save in the format of ``path``'s suffix (JPEG/WebP at high quality; PNG for suffixes PIL cannot write)."""
    if path.suffix.lower() not in Image.registered_extensions():  # e.g. photo.jfif: PIL cannot write that name
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
    image.save(path, **options)
