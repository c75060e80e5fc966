"""Optional face detection for ``predict.py --detect_faces``: OpenCV's bundled Haar cascade, nothing downloaded.

UTKFace images are tight, aligned face crops, so a whole holiday photo looks nothing like a training image.
With ``--detect_faces`` each face is found, cropped the way UTKFace crops faces, and predicted on its own.

Needs the ``faces`` extra (``pip install -e .[faces]``, OpenCV 4.x). OpenCV 5 no longer ships the Haar cascades
(they moved to opencv_contrib), and its ``FaceDetectorYN`` needs a model file that is not in the wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from project.errors import UserError

CASCADE_FILE = "haarcascade_frontalface_default.xml"
INSTALL_HINT = "pip install -e .[faces]"
#: OpenCV 5 satisfies the extra's lower bound but has no Haar cascades: it has to be replaced by a 4.x release
DOWNGRADE_HINT = "pip install 'opencv-python-headless>=4.8,<5'"

# Measured on 60 UTKFace crops pasted onto a grey canvas: the Haar box is about as wide as the crop (1.03x) and
# starts ~10 % of its height above it. So UTKFace crops are roughly the Haar box itself, a little lower down:
# a small margin, and the crop centre moved down by 8 % of the box height (keeps the chin, as UTKFace does).
FACE_MARGIN = 0.1
FACE_SHIFT_DOWN = 0.08
# Haar runs on a copy scaled to at most this side: a 12-megapixel photo would take seconds, with no gain.
DETECTION_MAX_SIDE = 1024


@dataclass(frozen=True)
class FaceBox:
    """A rectangle in image pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def as_tuple(self) -> Tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise UserError(f"--detect_faces needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    return cv2


def find_cascade(cv2) -> Path:
    """The frontal-face Haar cascade shipped inside the installed OpenCV package."""
    folders = [getattr(getattr(cv2, "data", None), "haarcascades", None), Path(cv2.__file__).parent / "data"]
    for folder in folders:
        if folder and (Path(folder) / CASCADE_FILE).is_file():
            return Path(folder) / CASCADE_FILE
    version = getattr(cv2, "__version__", "?")
    raise UserError(f"OpenCV {version} ships no Haar face cascade ({CASCADE_FILE}; OpenCV 5 dropped them): "
                    f"{DOWNGRADE_HINT}")


class FaceDetector:
    """Finds frontal faces with OpenCV's Haar cascade. Raises :class:`UserError` if OpenCV cannot do it."""

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5) -> None:
        cv2 = _import_cv2()
        if not hasattr(cv2, "CascadeClassifier"):
            raise UserError(f"OpenCV {getattr(cv2, '__version__', '?')} has no CascadeClassifier (OpenCV 5 moved it "
                            f"out): {DOWNGRADE_HINT}")
        self._cv2 = cv2
        cascade_file = find_cascade(cv2)
        self._cascade = cv2.CascadeClassifier(str(cascade_file))
        if self._cascade.empty():
            raise UserError(f"OpenCV could not read its face cascade {cascade_file}: reinstall it ({DOWNGRADE_HINT})")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, image: Image.Image) -> List[FaceBox]:
        """Faces in an upright RGB image, left to right, in the image's own pixel coordinates."""
        scale = min(1.0, DETECTION_MAX_SIDE / max(image.size))
        small = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        gray = np.asarray(small.convert("L"))
        min_side = max(24, min(gray.shape) // 20)  # ignore specks: faces below 5 % of the image are noise
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(min_side, min_side))
        faces = [FaceBox(*(round(v / scale) for v in box)) for box in np.asarray(boxes).reshape(-1, 4)]
        return sorted(faces, key=lambda f: (f.x, f.y))


def face_crop_box(face: FaceBox, image_size: Tuple[int, int], margin: float = FACE_MARGIN,
                  shift_down: float = FACE_SHIFT_DOWN) -> FaceBox:
    """The UTKFace-like square crop around ``face``: ``margin`` of the box on each side, clipped to the image."""
    width, height = image_size
    side = max(face.w, face.h) * (1 + 2 * margin)
    centre_x = face.x + face.w / 2
    centre_y = face.y + face.h / 2 + shift_down * face.h
    left, top = max(0, round(centre_x - side / 2)), max(0, round(centre_y - side / 2))
    right, bottom = min(width, round(centre_x + side / 2)), min(height, round(centre_y + side / 2))
    return FaceBox(left, top, right - left, bottom - top)


def crop_face(image: Image.Image, face: FaceBox) -> Image.Image:
    """The UTKFace-like crop of ``face`` from ``image``."""
    crop = face_crop_box(face, image.size)
    return image.crop((crop.x, crop.y, crop.x + crop.w, crop.y + crop.h))
