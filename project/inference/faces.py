"""Faces in ordinary photos for ``--detect_faces``: what a detected face is (``detectors.py`` picks who finds it).

UTKFace images are tight, aligned face chips, so a whole holiday photo looks nothing like a training image. With
``--detect_faces`` every face is found, cut out the way UTKFace cut its chips, and predicted on its own. The
default detector is RetinaFace (``project.inference.retina_faces``: five landmarks, eye alignment); dlib's HOG and
CNN detectors (``project.inference.dlib_faces``) and OpenCV's Haar cascade (``project.inference.haar``) stay
available. All come with the ``faces`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from PIL import Image

INSTALL_HINT = "pip install -e .[faces]"
DEFAULT_FACE_DETECTOR = "retinaface"
#: the smallest face found by default: the side of its UTKFace-like chip, in photo pixels. A small face's chip size
#: comes from its eye distance, which is a few pixels off at this size, so RetinaFace's default sits below the 40 px
#: faces that ``benchmarks/faces.py`` pastes (at 40 it dropped faces found with 0.99 probability). The others keep
#: 40: dlib's HOG scans a photo enlarged to make such a face fill its window, and at 32 it enlarged the astronaut
#: photo enough to report a second, false face
MIN_FACE = {"retinaface": 32, "hog": 40, "cnn": 40, "haar": 40}


@dataclass(frozen=True)
class FaceBox:
    """A rectangle in image pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def as_tuple(self) -> Tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


@dataclass(frozen=True)
class DetectedFace:
    """One face of a photo.

    ``box``: its UTKFace-like chip as ``(x, y, w, h)`` in photo pixels (unrotated); ``score``: the detector's
    confidence; ``landmarks``: left eye, right eye and nose ``(x, y)`` (``None`` from a detector without them);
    ``angle``: how far the face was turned to level its eyes (degrees); ``chip``: the crop the model sees.
    """

    box: Tuple[int, int, int, int]
    score: float
    landmarks: Optional[List[Tuple[float, float]]]
    angle: float
    chip: Image.Image


@runtime_checkable
class FaceDetector(Protocol):
    """What finds the faces of a photo: RetinaFace, dlib's HOG and CNN detectors, OpenCV's Haar cascade (the
    registry ``project.inference.detectors.DETECTORS`` builds them by name)."""

    #: the smallest face kept: the side of its chip, in photo pixels
    min_face: int

    def detect(self, image: Image.Image) -> List[DetectedFace]:
        """Every face of an RGB ``image`` at least :attr:`min_face` wide, left to right, with its chip."""
        ...


def keep_faces(faces: Sequence[DetectedFace], min_face: int) -> List[DetectedFace]:
    """The faces at least ``min_face`` pixels wide, left to right."""
    return sorted((f for f in faces if f.box[2] >= min_face), key=lambda f: (f.box[0], f.box[1]))
