"""Face detection for --detect_faces: the optional OpenCV extra and the UTKFace-like crop."""

import sys
import types

import pytest

from project.errors import UserError
from project.inference.faces import FaceBox, FaceDetector, face_crop_box


def test_missing_opencv_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes ``import cv2`` raise ImportError
    with pytest.raises(UserError, match=r"pip install -e \.\[faces\]"):
        FaceDetector()


def test_opencv_without_haar_cascades_is_a_one_line_error(monkeypatch, tmp_path):
    fake = types.ModuleType("cv2")  # OpenCV 5: no CascadeClassifier, no cascade files
    fake.__version__, fake.__file__ = "5.0.0", str(tmp_path / "cv2" / "__init__.py")
    monkeypatch.setitem(sys.modules, "cv2", fake)
    with pytest.raises(UserError, match="OpenCV 5.0.0.*<5"):
        FaceDetector()


def test_face_crop_adds_a_margin_and_stays_inside_the_image():
    crop = face_crop_box(FaceBox(100, 100, 50, 50), (400, 300), margin=0.4, shift_down=0.0)
    assert crop == FaceBox(80, 80, 90, 90)
    corner = face_crop_box(FaceBox(0, 0, 50, 50), (60, 60), margin=0.4, shift_down=0.0)
    assert (corner.x, corner.y) == (0, 0) and corner.x + corner.w <= 60 and corner.y + corner.h <= 60
