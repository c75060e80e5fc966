"""dlib's face detectors and its 5-point landmark model: every face of a photo, aligned like a UTKFace chip.

The model files come from PyPI with the ``faces`` extra (``face-recognition-models``: dlib's CC0 models; the
package's own ``__init__`` is never imported, it needs the removed ``pkg_resources``), so nothing is downloaded.
Two detectors: ``hog`` (HOG + linear SVM, the default) and ``cnn`` (dlib's MMOD convolutional detector: it finds a
few more faces but takes about 40 times as long on a CPU). Measured side by side in ``benchmarks/faces.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from project.common.errors import UserError
from project.inference.alignment import DLIB_TEMPLATE, align, cut_chip, eyes_and_nose
from project.inference.faces import INSTALL_HINT, MIN_FACE, DetectedFace, keep_faces

MODEL_PACKAGE = "face_recognition_models"
CNN_MODEL = "mmod_human_face_detector.dat"
LANDMARK_MODEL = "shape_predictor_5_face_landmarks.dat"
DLIB_MODELS = ("cnn", "hog")
#: the smallest face box each detector finds at scale 1 (photo pixels; dlib's detection windows)
SMALLEST_BOX = {"cnn": 40, "hog": 80}
#: a UTKFace chip is this many times the side of dlib's face box (median over UTKFace chips, per detector)
CHIP_PER_BOX = {"cnn": 1.24, "hog": 1.09}
#: the detector never scans more pixels than this: a 12-megapixel photo is scaled down first, a small one up
MAX_SCAN_PIXELS = 2_000_000


def model_folder() -> Path:
    """The folder of dlib's model files inside the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"--detect_faces needs dlib's face models, which are not installed: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [name for name in (CNN_MODEL, LANDMARK_MODEL) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{MODEL_PACKAGE} has no {missing[0]} in {folder}: reinstall it ({INSTALL_HINT})")
    return folder


def import_dlib():
    try:
        import dlib
    except ImportError:
        raise UserError(f"--detect_faces needs dlib, which is not installed: {INSTALL_HINT}") from None
    return dlib


class DlibFaceDetector:
    """Every face of a photo with dlib, aligned like a UTKFace chip.

    Args:
        model: ``hog`` (default) or ``cnn``.
        min_face: the smallest face to find, as the side of its UTKFace-like chip in photo pixels. Smaller faces
            are dropped: the model cannot tell much from them. The photo is scaled so such a face fills the
            detector's smallest window (but at most ``MAX_SCAN_PIXELS`` are scanned: in a very large photo the
            smallest face found is larger).
        threshold: the detector's score a face needs (dlib's scale: 0 is its own default; higher finds fewer,
            surer faces).
    """

    def __init__(self, model: str = "hog", min_face: int = MIN_FACE["hog"], threshold: float = 0.0) -> None:
        if model not in DLIB_MODELS:
            raise UserError(f"unknown dlib face model {model!r}: choose one of {', '.join(DLIB_MODELS)}")
        dlib = import_dlib()
        folder = model_folder()
        self.model = model
        self.min_face = min_face
        self.threshold = threshold
        self._landmarks = dlib.shape_predictor(str(folder / LANDMARK_MODEL))
        self._rectangle = dlib.rectangle
        if model == "cnn":
            self._cnn = dlib.cnn_face_detection_model_v1(str(folder / CNN_MODEL))
        else:
            self._hog = dlib.get_frontal_face_detector()

    def scan_scale(self, size: Tuple[int, int]) -> float:
        """How much the photo is scaled for the detector: ``min_face`` fills its smallest window."""
        wanted = SMALLEST_BOX[self.model] * CHIP_PER_BOX[self.model] / self.min_face
        largest = (MAX_SCAN_PIXELS / (size[0] * size[1])) ** 0.5
        return min(wanted, largest)

    def boxes(self, image: Image.Image) -> List[Tuple[Tuple[float, float, float, float], float]]:
        """dlib's face boxes ``(left, top, right, bottom)`` in photo pixels, with their scores."""
        scale = self.scan_scale(image.size)
        if abs(scale - 1) < 0.05:  # not worth a resize: scan the photo itself, so its boxes need no rescaling
            scale, scanned = 1.0, image
        else:
            scanned = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                   Image.BILINEAR)
        pixels = np.asarray(scanned)
        if self.model == "cnn":
            found = [(d.rect, d.confidence) for d in self._cnn(pixels, 0)]
        else:
            rects, scores, _ = self._hog.run(pixels, 0, self.threshold)
            found = list(zip(rects, scores))
        return [((r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale), float(score))
                for r, score in found if score >= self.threshold]

    def landmarks(self, image: Image.Image) -> List[np.ndarray]:
        """Per face: its left eye centre, right eye centre (left = on the photo's left) and nose, ``(3, 2)``."""
        return [points for points, _ in self._faces(image)]

    def _faces(self, image: Image.Image) -> List[Tuple[np.ndarray, float]]:
        pixels = np.asarray(image)
        faces = []
        for (left, top, right, bottom), score in self.boxes(image):
            shape = self._landmarks(pixels, self._rectangle(round(left), round(top), round(right), round(bottom)))
            points = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], dtype=np.float64)
            # dlib's 5 points: two corners of one eye, two of the other, the bottom of the nose
            faces.append((eyes_and_nose(points[0:2].mean(axis=0), points[2:4].mean(axis=0), points[4]), score))
        return faces

    def detect(self, image: Image.Image) -> List[DetectedFace]:
        """Every face of an upright RGB photo, left to right, aligned and cut like a UTKFace chip."""
        faces = []
        for points, score in self._faces(image):
            alignment = align(tuple(points[0]), tuple(points[1]), DLIB_TEMPLATE)
            faces.append(DetectedFace(alignment.box(), score, [tuple(map(float, p)) for p in points],
                                      alignment.angle, cut_chip(image, alignment)))
        return keep_faces(faces, self.min_face)
