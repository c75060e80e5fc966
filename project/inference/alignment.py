"""Faces cut out the way UTKFace cut its chips: eyes level, at the same scale and position.

UTKFace's "aligned & cropped" chips are 200x200 pixels with the eyes level at fixed places. A face found in a photo is
rotated so its eyes are level and scaled and cropped so its eyes land where UTKFace's do, so the model sees what it
learned on. Each landmark model marks the eyes a little differently, so each has its own template, measured on real
UTKFace chips with that model (``benchmarks/utkface_eyes.py``: median eye centres, as fractions of the chip's side; the
chips' own eyes are level to within 1.1 degrees, median): dlib's 5-point model on 1,000 chips, RetinaFace's with its eye
refinement (``project.inference.retina_faces``) on the same 1,000 (its eye centres sit 1.5 % of the side higher than
dlib's; how many chips each found: docs/results.md, "Faces in photos benchmark"). The refinement cuts its crop with this
template, so the template was measured again with it until it no longer moved (0.001 of the side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image

#: the side of a UTKFace chip; aligned crops have this size and then go through the one preprocessing path
CHIP_SIDE = 200
Point = Tuple[float, float]


@dataclass(frozen=True)
class Template:
    """Median centres of the eye on the image's left and on its right in UTKFace chips, as one landmark model
    marks them (x, y as fractions of the chip's side)."""

    left_eye: Point
    right_eye: Point


DLIB_TEMPLATE = Template(left_eye=(0.295, 0.305), right_eye=(0.685, 0.305))
RETINAFACE_TEMPLATE = Template(left_eye=(0.296, 0.290), right_eye=(0.692, 0.290))
#: what the chip shows outside the photo (a face at the photo's edge): mid grey
FILL = (128, 128, 128)


@dataclass(frozen=True)
class Alignment:
    """Where a chip lies in the photo: its centre, its side (photo pixels) and its rotation (degrees, counter-
    clockwise in the picture; 0 when the eyes were already level)."""

    centre: Point
    side: float
    angle: float

    def box(self) -> Tuple[int, int, int, int]:
        """The chip's square, unrotated, as ``(x, y, w, h)`` in photo pixels (what is drawn and reported)."""
        x, y = self.centre
        return (round(x - self.side / 2), round(y - self.side / 2), round(self.side), round(self.side))

    def widened(self, factor: float) -> "Alignment":
        """The square ``factor`` times as wide, with the same centre and turn."""
        return Alignment(self.centre, self.side * factor, self.angle)

    def to_photo_matrix(self) -> Tuple[float, float, float, float, float, float]:
        """``(a, b, c, d, e, f)``: chip pixel ``(u, v)`` of a ``CHIP_SIDE`` chip lies at photo pixel
        ``(a u + b v + c, d u + e v + f)`` (PIL's affine transform)."""
        scale = self.side / CHIP_SIDE  # photo pixels per chip pixel
        cos, sin = math.cos(math.radians(self.angle)) * scale, math.sin(math.radians(self.angle)) * scale
        half = CHIP_SIDE / 2
        return cos, -sin, self.centre[0] - (cos - sin) * half, sin, cos, self.centre[1] - (sin + cos) * half

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Points ``(N, 2)`` in chip pixels as photo pixels."""
        a, b, c, d, e, f = self.to_photo_matrix()
        points = np.asarray(points, dtype=np.float64)
        return np.stack([a * points[:, 0] + b * points[:, 1] + c, d * points[:, 0] + e * points[:, 1] + f], axis=1)


def eyes_and_nose(eye: Point, other_eye: Point, nose: Point) -> np.ndarray:
    """A landmark model's two eye centres (in its own order) and nose as ``(3, 2)``: the eye on the photo's left,
    the one on its right, the nose; the order :func:`align` and every face's ``landmarks`` use."""
    left, right = sorted([eye, other_eye], key=lambda point: point[0])
    return np.array([left, right, nose], dtype=np.float64)


def align(left_eye: Point, right_eye: Point, template: Template) -> Alignment:
    """The chip of the face whose eye centres are ``left_eye`` and ``right_eye`` (photo pixels; left = the eye on
    the photo's left), as marked by the landmark model whose ``template`` this is."""
    dx, dy = right_eye[0] - left_eye[0], right_eye[1] - left_eye[1]
    angle = math.atan2(dy, dx)
    template_distance = (template.right_eye[0] - template.left_eye[0]) * CHIP_SIDE
    pixels_per_chip_pixel = math.hypot(dx, dy) / template_distance
    # the chip's centre relative to its left eye, in chip pixels, turned and scaled into the photo
    ux = (0.5 - template.left_eye[0]) * CHIP_SIDE * pixels_per_chip_pixel
    uy = (0.5 - template.left_eye[1]) * CHIP_SIDE * pixels_per_chip_pixel
    cos, sin = math.cos(angle), math.sin(angle)
    centre = (left_eye[0] + cos * ux - sin * uy, left_eye[1] + sin * ux + cos * uy)
    return Alignment(centre, CHIP_SIDE * pixels_per_chip_pixel, math.degrees(angle))


def cut_chip(image: Image.Image, alignment: Alignment) -> Image.Image:
    """The ``CHIP_SIDE`` square chip of ``alignment`` from ``image``: eyes level, UTKFace's scale and position."""
    scale = alignment.side / CHIP_SIDE  # photo pixels per chip pixel
    shrink = int(scale)
    if shrink >= 2:  # a large face: shrink its neighbourhood first (box filter), so the chip does not alias
        reach = alignment.side * 0.75  # more than half the chip's diagonal: every pixel a turned chip can use
        x, y = alignment.centre
        left, top = max(0, math.floor(x - reach)), max(0, math.floor(y - reach))
        right, bottom = min(image.width, math.ceil(x + reach)), min(image.height, math.ceil(y + reach))
        image = image.crop((left, top, right, bottom)).reduce(shrink)
        alignment = Alignment(((x - left) / shrink, (y - top) / shrink), alignment.side / shrink, alignment.angle)
    return image.transform((CHIP_SIDE, CHIP_SIDE), Image.AFFINE, alignment.to_photo_matrix(), resample=Image.BICUBIC,
                           fillcolor=FILL)
