"""The prediction API: every image format and mode, arrays and PIL images, EXIF, unreadable inputs, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import IMAGE_MODES, pattern
from PIL import Image

from project.common.errors import UserError
from project.core.age_groups import GROUP_LABELS
from project.core.transforms import build_transform
from project.inference.predictor import AgeGroupPredictor
from project.lit_classifier_main import LitClassifier


def assert_valid(prediction):
    assert prediction.ok, prediction.error
    probabilities = [prediction.probabilities[label] for label in GROUP_LABELS]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert prediction.group == GROUP_LABELS[prediction.group_index] == GROUP_LABELS[int(np.argmax(probabilities))]
    assert prediction.confidence == pytest.approx(max(probabilities))


def test_predictions_are_the_trained_models_calibrated_probabilities_and_ages(predictor, checkpoint, photo_dir):
    model = LitClassifier.load_from_checkpoint(checkpoint).eval()
    image = Image.open(photo_dir / "rgb.png").convert("RGB")
    batch = build_transform(32)(image).unsqueeze(0)
    with torch.no_grad():
        expected = model.predict_step(batch, 0)[0]
        _, years = model.net.predict(batch)
    ages = model.age_calibration.estimate(years)
    [prediction] = predictor.predict(image, face_detector=None)
    assert [prediction.probabilities[label] for label in GROUP_LABELS] == pytest.approx(expected.tolist(), abs=1e-6)
    assert prediction.age == pytest.approx(ages.age.item())
    assert prediction.age_interval == pytest.approx((ages.low.item(), ages.high.item()))
    assert prediction.age_interval[0] <= prediction.age <= prediction.age_interval[1]


def test_a_model_without_per_year_outputs_gives_no_age(tmp_path, photo_dir):
    from helpers.models import tiny_model

    from project.config.recipes import NOTEBOOK
    from project.models.checkpoint import TrainedNet

    model = tiny_model(NOTEBOOK).eval()
    [prediction] = AgeGroupPredictor(TrainedNet(model.net, 1.0, None)).predict(photo_dir / "rgb.png",
                                                                              face_detector=None)
    assert prediction.ok and prediction.age is None and prediction.age_interval is None


def test_every_file_format_and_mode_is_predicted(predictor, photo_dir):
    assert Image.open(photo_dir / "sixteen_bit.png").mode == "I;16"
    assert Image.open(photo_dir / "cmyk.jpg").mode == "CMYK"
    predictions = predictor.predict([photo_dir / name for name in IMAGE_MODES], batch_size=5, face_detector=None)
    assert [Path(p.source).name for p in predictions] == IMAGE_MODES
    for prediction in predictions:
        assert_valid(prediction)


def test_pil_images_arrays_and_single_inputs(predictor, photo_dir):
    [from_file] = predictor.predict(photo_dir / "rgb.png", face_detector=None)  # a single input still gives a list
    from_pil, from_array = predictor.predict([Image.fromarray(pattern()), pattern()], face_detector=None)
    assert (from_pil.source, from_array.source) == ("<PIL image #0>", "<array #1>")
    for prediction in (from_pil, from_array):
        assert prediction.probabilities == pytest.approx(from_file.probabilities, abs=1e-6)


def test_exif_orientation_is_applied(predictor, photo_dir):
    with Image.open(photo_dir / "exif_rotated.jpg") as stored:
        stored.load()
        stored_pixels = Image.fromarray(np.asarray(stored))  # the same pixels without the EXIF tag
    upright = stored_pixels.transpose(Image.Transpose.ROTATE_270)  # what orientation 6 means
    assert upright.size == (32, 48)
    from_file, by_hand, sideways = predictor.predict([photo_dir / "exif_rotated.jpg", upright, stored_pixels],
                                                       face_detector=None)
    assert from_file.probabilities == pytest.approx(by_hand.probabilities, abs=1e-6)
    assert from_file.probabilities != pytest.approx(sideways.probabilities, abs=1e-9)


def test_unreadable_inputs_get_an_error_and_the_rest_go_on(predictor, photo_dir, tmp_path):
    inputs = [photo_dir / "corrupt.jpg", photo_dir / "rgb.jpg", photo_dir / "notes.txt", tmp_path / "missing.jpg",
              np.zeros((8, 8, 3), dtype=np.float32), photo_dir]
    corrupt, good, text, missing, float_array, folder = predictor.predict(inputs, face_detector=None)
    assert_valid(good)
    for failed in (corrupt, text, missing, float_array, folder):
        assert failed.error and failed.group is None and failed.probabilities == {}
    assert "not a readable image" in corrupt.error and missing.error == "file not found"


def test_a_bad_checkpoint_or_batch_size_is_a_user_error(predictor, tmp_path, checkpoint):
    with pytest.raises(UserError, match="does not exist"):
        AgeGroupPredictor.from_checkpoint(tmp_path / "missing.ckpt")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(checkpoint.read_bytes()[:5000])  # truncated download
    with pytest.raises(UserError, match="cannot load checkpoint"):
        AgeGroupPredictor.from_checkpoint(broken)
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        predictor.predict([tmp_path], batch_size=0)


def test_faces_are_found_by_default_and_a_face_chip_is_predicted_as_it_is(predictor):
    """``face_detector="auto"``: the faces of a photo are found; a face chip (one face filling it) is not cut again."""
    from helpers.photos import real_face
    from helpers.run_if import face_detector

    detector = face_detector("retinaface")
    photo = Image.new("RGB", (640, 480), (90, 120, 150))
    photo.paste(real_face(160), (300, 120))
    [in_photo] = predictor.predict(photo)
    x, y, w, h = in_photo.face_box
    assert in_photo.ok and 300 < x + w / 2 < 460 and 120 < y + h / 2 < 280
    [face] = detector.detect(photo)
    [as_found] = predictor.predict(face.chip)  # a UTKFace-like chip: its one face fills the frame
    [as_is] = predictor.predict(face.chip, face_detector=None)
    assert as_found.face_box is not None
    assert as_found.probabilities == pytest.approx(as_is.probabilities, abs=1e-6)


def test_without_the_faces_extra_each_whole_image_is_one_face_and_it_is_said_once(monkeypatch, checkpoint,
                                                                                    photo_dir, capsys):
    from project.inference import detectors

    def not_installed(self):
        raise UserError(f"--face_detector retinaface needs onnxruntime, which is not installed: "
                        f"{detectors.INSTALL_HINT}")

    monkeypatch.setattr(detectors.FaceOptions, "check", not_installed)
    monkeypatch.setattr(detectors, "_told_whole_image", False)
    fresh = AgeGroupPredictor.from_checkpoint(checkpoint)
    first, second = fresh.predict([photo_dir / "rgb.png", photo_dir / "rgb.jpg"])
    fresh.predict(photo_dir / "rgb.png")
    assert first.ok and second.ok and first.face_box is None
    assert capsys.readouterr().err.count("each whole image is taken as one face") == 1


def test_a_face_chip_is_a_square_image_that_one_face_fills():
    from project.inference.faces import DetectedFace
    from project.inference.predictor import face_filling

    def face(x, y, side):
        return DetectedFace(box=(x, y, side, side), score=0.99, landmarks=None, angle=0.0, chip=None)

    big, small = face(-10, -5, 215), face(150, 150, 30)
    assert face_filling([small, big], (200, 200)) is big  # a second, small "face" in a chip is a false detection
    assert face_filling([small], (200, 200)) is None  # a small face in a square photo
    assert face_filling([big], (200, 320)) is None  # not square: a photo, whose faces are cut out and aligned
    assert face_filling([], (200, 200)) is None
