"""Skip conditions, as markers: a test that needs something this machine lacks skips with the reason."""

import pytest

from helpers.paths import REAL_ARCHIVE, REAL_WEIGHTS

#: the real UTKFace archive and the ImageNet VGG16 weights of ../shared (CI has them; a user's clone does not)
real_data = pytest.mark.skipif(not (REAL_ARCHIVE.is_file() and REAL_WEIGHTS.is_file()),
                               reason="../shared UTKFace archive or VGG16 weights not present")


def face_detector(name: str = "hog", **options):
    """The face detector ``name`` (dlib's by default, ``haar`` for OpenCV's), or skip when the faces extra is
    missing (no dlib or its models, no OpenCV, or OpenCV 5 without the cascades)."""
    from project.common.errors import UserError
    from project.inference.detectors import make_face_detector

    try:
        return make_face_detector(name, **options)
    except UserError as err:
        pytest.skip(str(err))
