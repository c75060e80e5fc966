"""OpenCV's Haar cascade (2001): the first default of ``--detect_faces``, kept as ``--face_detector haar``.

Frontal, upright faces only, and no landmarks, so its crops are not aligned: a square around the Haar box, placed
the way UTKFace crops faces. Needs OpenCV 4.x (OpenCV 5 ships no Haar cascades). ``benchmarks/faces.py`` measures
it beside dlib's detectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from project.common.errors import UserError
from project.inference.faces import INSTALL_HINT, MIN_FACE, DetectedFace, FaceBox, keep_faces

CASCADE_FILE = "haarcascade_frontalface_default.xml"
HAAR_INSTALL_HINT = "pip install 'opencv-python>=4.8,<5'"  # the faces extra's OpenCV

# Measured on 60 UTKFace crops pasted onto a grey canvas: the Haar box is about as wide as the crop (1.03x) and
# starts ~10 % of its height above it. So UTKFace crops are roughly the Haar box itself, a little lower down:
# a small margin, and the crop centre moved down by 8 % of the box height (keeps the chin, as UTKFace does).
FACE_MARGIN = 0.1
FACE_SHIFT_DOWN = 0.08
# Haar runs on a copy scaled to at most this side: a 12-megapixel photo would take seconds, with no gain.
DETECTION_MAX_SIDE = 1024


def _import_cv2():
    try:
        import cv2
    except ImportError as err:  # not installed, or a library it needs is missing (libGL.so.1 on a bare server)
        raise UserError(f"--face_detector haar needs OpenCV, which could not be imported ({err}): {INSTALL_HINT}"
                        f"{'; on Debian/Ubuntu also: apt install libgl1' if 'libGL' in str(err) else ''}") from None
    return cv2


def find_cascade(cv2) -> Path:
    """The frontal-face Haar cascade shipped inside the installed OpenCV package."""
    folders = [getattr(getattr(cv2, "data", None), "haarcascades", None), Path(cv2.__file__).parent / "data"]
    for folder in folders:
        if folder and (Path(folder) / CASCADE_FILE).is_file():
            return Path(folder) / CASCADE_FILE
    version = getattr(cv2, "__version__", "?")
    raise UserError(f"OpenCV {version} ships no Haar face cascade ({CASCADE_FILE}; OpenCV 5 dropped them): "
                    f"{HAAR_INSTALL_HINT}")


class HaarFaceDetector:
    """Frontal faces with OpenCV's Haar cascade. Raises :class:`UserError` if OpenCV cannot do it.

    ``min_face`` is the smallest chip side kept (photo pixels); ``threshold`` the cascade's ``minNeighbors``
    (how many overlapping hits a face needs; OpenCV's usual 5 when 0 or less).
    """

    def __init__(self, min_face: int = MIN_FACE["haar"], threshold: float = 0.0, scale_factor: float = 1.1) -> None:
        cv2 = _import_cv2()
        if not hasattr(cv2, "CascadeClassifier"):
            raise UserError(f"OpenCV {getattr(cv2, '__version__', '?')} has no CascadeClassifier (OpenCV 5 moved it "
                            f"out): {HAAR_INSTALL_HINT}")
        cascade_file = find_cascade(cv2)
        self._cascade = cv2.CascadeClassifier(str(cascade_file))
        if self._cascade.empty():
            raise UserError(f"OpenCV could not read its face cascade {cascade_file}: reinstall it "
                            f"({HAAR_INSTALL_HINT})")
        self.min_face = min_face
        self.min_neighbors = int(threshold) if threshold > 0 else 5
        self.scale_factor = scale_factor

    def boxes(self, image: Image.Image) -> List[FaceBox]:
        """Haar boxes in the photo's pixels (the cascade runs on a copy of at most ``DETECTION_MAX_SIDE``)."""
        scale = min(1.0, DETECTION_MAX_SIDE / max(image.size))
        small = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        gray = np.asarray(small.convert("L"))
        min_side = max(24, round(self.min_face * scale / (1 + 2 * FACE_MARGIN)))
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(min_side, min_side))
        return [FaceBox(*(round(v / scale) for v in box)) for box in np.asarray(found).reshape(-1, 4)]

    def detect(self, image: Image.Image) -> List[DetectedFace]:
        """Every face found, left to right, with its UTKFace-like (unaligned) crop."""
        faces = []
        for box in self.boxes(image):
            crop = face_crop_box(box, image.size)
            pixels = image.crop((crop.x, crop.y, crop.x + crop.w, crop.y + crop.h))
            faces.append(DetectedFace(crop.as_tuple(), 1.0, None, 0.0, pixels))
        return keep_faces(faces, self.min_face)


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
