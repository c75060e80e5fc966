"""The face detector of ``--face_detector``: RetinaFace (default), dlib's HOG or CNN detector,
or OpenCV's Haar cascade.

One home for the face options of every command (``predict``, the server, the benchmarks): :class:`FaceOptions`,
its flags (:func:`add_face_arguments`), the registry of detectors (:data:`DETECTORS`) and :func:`make_face_detector`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from project.common.errors import UserError
from project.inference.faces import DEFAULT_FACE_DETECTOR, INSTALL_HINT, MIN_FACE, FaceDetector

#: ``face_detector="auto"``: find faces with the default detector where the faces extra is installed
AUTO = "auto"
#: said once, on standard error, where ``auto`` finds no detector installed
WHOLE_IMAGE_NOTE = (f"note: no face detector is installed, so each whole image is taken as one face; to find the "
                    f"faces in photos: {INSTALL_HINT}")
_told_whole_image = False


@dataclass(frozen=True)
class FaceOptions:
    """Which detector finds faces, the smallest face it keeps (chip side, photo pixels; ``None``: the detector's
    default, :data:`MIN_FACE`) and its score threshold."""

    detector: str = DEFAULT_FACE_DETECTOR
    min_face: Optional[int] = None
    threshold: float = 0.0

    def build(self) -> FaceDetector:
        return make_face_detector(self.detector, self.min_face, self.threshold)

    def check(self) -> None:
        """Raise :class:`UserError` now if :meth:`build` would (a bad option, the faces extra missing), without
        loading the detector's models: a server checks its flags before its workers build the detector."""
        check_face_detector(self.detector, self.min_face)


@dataclass(frozen=True)
class DetectorKind:
    """One ``--face_detector`` choice: how to check that it can be built (its packages and model files are there,
    without loading them) and how to build it. Both import the detector's module only when called."""

    check: Callable[[], None]
    build: Callable[[int, float], FaceDetector]


def _retinaface() -> DetectorKind:
    def check() -> None:
        from project.inference.retina_faces import import_onnxruntime, load_weights

        import_onnxruntime()
        load_weights()

    def build(min_face: int, threshold: float) -> FaceDetector:
        from project.inference.retina_faces import RetinaFaceDetector

        return RetinaFaceDetector(min_face=min_face, threshold=threshold)

    return DetectorKind(check, build)


def _dlib(model: str) -> DetectorKind:
    def check() -> None:
        from project.inference.dlib_faces import import_dlib, model_folder

        import_dlib()
        model_folder()

    def build(min_face: int, threshold: float) -> FaceDetector:
        from project.inference.dlib_faces import DlibFaceDetector

        return DlibFaceDetector(model=model, min_face=min_face, threshold=threshold)

    return DetectorKind(check, build)


def _haar() -> DetectorKind:
    def build(min_face: int, threshold: float) -> FaceDetector:
        from project.inference.haar import HaarFaceDetector

        return HaarFaceDetector(min_face=min_face, threshold=threshold)

    def check() -> None:
        build(MIN_FACE["haar"], 0.0)  # building it is the check: one small XML file

    return DetectorKind(check, build)


#: Every face detector by its ``--face_detector`` name, the default first.
DETECTORS: Dict[str, DetectorKind] = {"retinaface": _retinaface(), "hog": _dlib("hog"), "cnn": _dlib("cnn"),
                                      "haar": _haar()}
FACE_DETECTORS = tuple(DETECTORS)
assert FACE_DETECTORS[0] == DEFAULT_FACE_DETECTOR and set(FACE_DETECTORS) == set(MIN_FACE)


def _kind_of(detector: str, min_face: Optional[int]) -> Tuple[DetectorKind, int]:
    if detector not in DETECTORS:
        raise UserError(f"unknown face detector {detector!r}: choose one of {', '.join(FACE_DETECTORS)}")
    min_face = MIN_FACE[detector] if min_face is None else min_face
    if min_face < 1:
        raise UserError(f"--min_face must be at least 1 pixel (got {min_face})")
    return DETECTORS[detector], min_face


def make_face_detector(detector: str = DEFAULT_FACE_DETECTOR, min_face: Optional[int] = None,
                       threshold: float = 0.0) -> FaceDetector:
    """The face detector named ``detector`` (one of :data:`FACE_DETECTORS`). Raises :class:`UserError` with the
    install command when its packages are missing, or for a bad option."""
    kind, min_face = _kind_of(detector, min_face)
    return kind.build(min_face, threshold)


def check_face_detector(detector: str = DEFAULT_FACE_DETECTOR, min_face: Optional[int] = None) -> None:
    """Raise what :func:`make_face_detector` would for a bad name, option or missing package, without loading the
    detector's models."""
    kind, _ = _kind_of(detector, min_face)
    kind.check()


def auto_face_detector(options: Optional[FaceOptions] = None) -> Optional[FaceDetector]:
    """The default face detector (``options``' detector), or ``None`` when the faces extra is not installed, which
    is then said once per process in one line. A bad option is still a :class:`UserError`."""
    global _told_whole_image
    options = options or FaceOptions()
    try:
        options.check()
    except UserError as err:
        if "not installed" not in str(err):  # a bad option or a broken install is still an error
            raise
        if not _told_whole_image:
            print(WHOLE_IMAGE_NOTE, file=sys.stderr)
            _told_whole_image = True
        return None
    return options.build()


def add_face_arguments(parser: argparse.ArgumentParser) -> None:
    """``--face_detector``, ``--min_face`` and ``--face_threshold``, the same for every command."""
    parser.add_argument("--face_detector", default=DEFAULT_FACE_DETECTOR, choices=FACE_DETECTORS,
                        help="retinaface: RetinaFace (finds small and turned faces, the fastest); hog: dlib's HOG "
                             "detector (several times slower, misses more); cnn: dlib's CNN detector (far slower); "
                             "haar: OpenCV's Haar cascade (no landmarks, so no alignment); measured: "
                             "docs/results.md, 'Faces in photos benchmark'")
    parser.add_argument("--min_face", type=int, default=None,
                        help="smallest face kept: the side of its UTKFace-like crop, in photo pixels (default: "
                             + ", ".join(f"{name} {size}" for name, size in MIN_FACE.items()) + ")")
    parser.add_argument("--face_threshold", type=float, default=0.0,
                        help="detector score a face needs, 0 = the detector's default (retinaface: face probability, "
                             "0 = 0.8; hog/cnn: dlib's score, 0 = dlib's default; haar: neighbours needed, 0 = 5); "
                             "higher = fewer, surer faces")


def face_options_from(args: argparse.Namespace) -> FaceOptions:
    return FaceOptions(args.face_detector, args.min_face, args.face_threshold)
