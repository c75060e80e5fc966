"""Skip conditions, as markers: a test that needs something this machine lacks skips with the reason."""

import pytest

from helpers.paths import REAL_ARCHIVE, REAL_WEIGHTS

#: the real UTKFace archive and the ImageNet VGG16 weights of ../shared (CI has them; a user's clone does not)
real_data = pytest.mark.skipif(not (REAL_ARCHIVE.is_file() and REAL_WEIGHTS.is_file()),
                               reason="../shared UTKFace archive or VGG16 weights not present")


def opencv_face_detector():
    """OpenCV's Haar face detector, or skip (no OpenCV, or OpenCV 5 without the cascades)."""
    pytest.importorskip("cv2")
    from project.errors import UserError
    from project.inference.faces import FaceDetector

    try:
        return FaceDetector()
    except UserError as err:
        pytest.skip(str(err))
