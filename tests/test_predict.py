"""predict.py: the Python API and the command line on images of every kind, outputs, exit codes, faces."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_ARCHIVE, REPO, write_synthetic_utkface
from project.age_groups import GROUP_LABELS
from project.errors import UserError
from project.faces import FaceBox, FaceDetector, face_crop_box
from project.predict import CSV_COLUMNS, AgeGroupPredictor, main

IMAGE_MODES = ["rgb.jpg", "rgb.png", "rgb.webp", "rgb.bmp", "palette.gif", "gray_L.png", "palette_P.png",
               "rgba.png", "gray_alpha_LA.png", "cmyk.jpg", "sixteen_bit.png", "exif_rotated.jpg"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint from a one-epoch fit on 60 synthetic 40 px images (32 px model, random backbone)."""
    from project.cli import main as train

    root = tmp_path_factory.mktemp("fit")
    write_synthetic_utkface(root / "UTKFace")
    train(["--data_dir", str(root / "UTKFace"), "--image_size", "32", "--backbone_weights", "none",
           "--cache_dir", str(root / "cache"), "--default_root_dir", str(root / "runs"), "--num_workers", "0",
           "--batch_size", "8", "--accelerator", "cpu", "--precision", "32", "--max_epochs", "1"])
    return sorted((root / "runs" / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))[0]


@pytest.fixture(scope="module")
def predictor(checkpoint) -> AgeGroupPredictor:
    return AgeGroupPredictor.from_checkpoint(checkpoint)


def _pattern(width: int = 48, height: int = 32) -> np.ndarray:
    """A non-square, non-symmetric RGB pattern, so a rotation changes what the model sees."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """One image per file format and PIL mode, a corrupt JPEG and a text file."""
    folder = tmp_path_factory.mktemp("photos")
    rgb = Image.fromarray(_pattern())
    rgb.save(folder / "rgb.jpg", quality=95)
    rgb.save(folder / "rgb.png")
    rgb.save(folder / "rgb.webp")
    rgb.save(folder / "rgb.bmp")
    rgb.convert("P").save(folder / "palette.gif")
    rgb.convert("L").save(folder / "gray_L.png")
    rgb.convert("P").save(folder / "palette_P.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    rgb.convert("LA").save(folder / "gray_alpha_LA.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(_pattern()[:, :, 0].astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels must be turned 90 degrees clockwise to be upright
    rgb.save(folder / "exif_rotated.jpg", quality=95, exif=exif)
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(600))
    (folder / "notes.txt").write_text("not an image")
    return folder


def run_cli(argv, capsys):
    """Run ``predict.py`` in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_valid(prediction):
    assert prediction.ok, prediction.error
    probabilities = [prediction.probabilities[label] for label in GROUP_LABELS]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert prediction.group == GROUP_LABELS[prediction.group_index] == GROUP_LABELS[int(np.argmax(probabilities))]
    assert prediction.confidence == pytest.approx(max(probabilities))


# ------------------------------------------------------------------------------------------------------ API


def test_every_file_format_and_mode_is_predicted(predictor, photo_dir):
    assert Image.open(photo_dir / "sixteen_bit.png").mode == "I;16"
    assert Image.open(photo_dir / "cmyk.jpg").mode == "CMYK"
    predictions = predictor.predict([photo_dir / name for name in IMAGE_MODES], batch_size=5)
    assert [Path(p.source).name for p in predictions] == IMAGE_MODES
    for prediction in predictions:
        assert_valid(prediction)


def test_pil_images_arrays_and_single_inputs(predictor, photo_dir):
    pattern = _pattern()
    [from_file] = predictor.predict(photo_dir / "rgb.png")  # a single input still gives a list
    from_pil, from_array = predictor.predict([Image.fromarray(pattern), pattern])
    assert (from_pil.source, from_array.source) == ("<PIL image #0>", "<array #1>")
    for prediction in (from_pil, from_array):
        assert prediction.probabilities == pytest.approx(from_file.probabilities, abs=1e-6)


def test_exif_orientation_is_applied(predictor, photo_dir):
    with Image.open(photo_dir / "exif_rotated.jpg") as stored:
        stored.load()
        stored_pixels = Image.fromarray(np.asarray(stored))  # the same pixels without the EXIF tag
    upright = stored_pixels.transpose(Image.Transpose.ROTATE_270)  # what orientation 6 means
    assert upright.size == (32, 48)
    from_file, by_hand, sideways = predictor.predict([photo_dir / "exif_rotated.jpg", upright, stored_pixels])
    assert from_file.probabilities == pytest.approx(by_hand.probabilities, abs=1e-6)
    assert from_file.probabilities != pytest.approx(sideways.probabilities, abs=1e-9)


def test_unreadable_inputs_get_an_error_and_the_rest_go_on(predictor, photo_dir, tmp_path):
    inputs = [photo_dir / "corrupt.jpg", photo_dir / "rgb.jpg", photo_dir / "notes.txt", tmp_path / "missing.jpg",
              np.zeros((8, 8, 3), dtype=np.float32), photo_dir]
    corrupt, good, text, missing, float_array, folder = predictor.predict(inputs)
    assert_valid(good)
    for failed in (corrupt, text, missing, float_array, folder):
        assert failed.error and failed.group is None and failed.probabilities == {}
    assert "not a readable image" in corrupt.error and missing.error == "file not found"


def test_a_bad_checkpoint_is_a_user_error(tmp_path, checkpoint):
    with pytest.raises(UserError, match="does not exist"):
        AgeGroupPredictor.from_checkpoint(tmp_path / "missing.ckpt")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(checkpoint.read_bytes()[:5000])  # truncated download
    with pytest.raises(UserError, match="cannot load checkpoint"):
        AgeGroupPredictor.from_checkpoint(broken)


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_outputs_agree_with_the_api(predictor, checkpoint, photo_dir, tmp_path, capsys):
    annotated = tmp_path / "annotated"
    code, out, err = run_cli(["--ckpt", checkpoint, photo_dir, photo_dir / "notes.txt", "--output",
                              tmp_path / "out.csv", "--annotate", annotated, "--device", "cpu"], capsys)
    assert code == 0
    assert "corrupt.jpg: not a readable image" in err and "notes.txt" in err
    assert out.splitlines()[0].split() == ["file", "group", *GROUP_LABELS]

    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_COLUMNS
    by_name = {Path(row["source"]).name: row for row in rows}
    assert sorted(by_name) == sorted(IMAGE_MODES + ["corrupt.jpg", "notes.txt"])  # folder walked, .txt only if named
    assert by_name["corrupt.jpg"]["error"] and not by_name["corrupt.jpg"]["group"]

    api = {Path(p.source).name: p for p in predictor.predict([photo_dir / name for name in IMAGE_MODES])}
    for name in IMAGE_MODES:
        row = by_name[name]
        probabilities = [float(row[f"p_{label}"]) for label in GROUP_LABELS]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5) and row["error"] == ""
        assert row["group"] == api[name].group
        assert probabilities == pytest.approx([api[name].probabilities[label] for label in GROUP_LABELS], abs=1e-6)
        with Image.open(annotated / name) as copy, Image.open(photo_dir / name) as original:
            expected = original.size[::-1] if name == "exif_rotated.jpg" else original.size  # the upright size
            assert copy.size == expected
    assert not (annotated / "corrupt.jpg").exists()

    code, _, _ = run_cli(["--ckpt", checkpoint, photo_dir, "--output", tmp_path / "out.json"], capsys)
    records = json.loads((tmp_path / "out.json").read_text())
    assert code == 0 and len(records) == len(IMAGE_MODES) + 1
    for record in records:
        assert set(record) == {"source", "group", "group_index", "confidence", "probabilities", "face_box", "error"}
        if record["error"] is None:
            assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert record["probabilities"] == pytest.approx(api[Path(record["source"]).name].probabilities, abs=1e-6)


def test_cli_exit_codes(checkpoint, photo_dir, tmp_path, capsys):
    code, _, err = run_cli(["--ckpt", checkpoint, photo_dir / "corrupt.jpg", photo_dir / "notes.txt"], capsys)
    assert code == 1 and "no image could be predicted" in err

    for argv, message in [
        (["--ckpt", tmp_path / "missing.ckpt", photo_dir], "does not exist"),
        (["--ckpt", checkpoint, tmp_path / "nowhere"], "does not exist"),
        (["--ckpt", checkpoint, tmp_path], "no image files"),  # an empty folder
        (["--ckpt", checkpoint, photo_dir, "--output", tmp_path / "out.xlsx"], ".csv or .json"),
        (["--ckpt", photo_dir / "notes.txt", photo_dir / "rgb.jpg"], "cannot load checkpoint"),
    ]:
        code, out, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert err.startswith("predict.py: error: ") and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err + out


def test_runs_as_a_script_and_as_a_module(checkpoint, photo_dir, tmp_path):
    script = subprocess.run([sys.executable, str(REPO / "project" / "predict.py"), "--ckpt", str(checkpoint),
                             str(photo_dir / "rgb.png")], cwd=tmp_path, capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    assert "rgb.png" in script.stdout
    module = subprocess.run([sys.executable, "-m", "project.predict", "--ckpt", str(tmp_path / "missing.ckpt"),
                             str(photo_dir)], cwd=REPO, capture_output=True, text=True)
    assert module.returncode == 2
    assert module.stderr.startswith("predict.py: error: --ckpt") and module.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------- faces


def test_missing_opencv_is_a_one_line_error(monkeypatch, checkpoint, photo_dir, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes ``import cv2`` raise ImportError
    with pytest.raises(UserError, match=r"pip install -e \.\[faces\]"):
        FaceDetector()
    code, _, err = run_cli(["--ckpt", checkpoint, photo_dir, "--detect_faces"], capsys)
    assert code == 2 and "pip install -e .[faces]" in err and err.count("\n") == 1


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


def _utkface_faces(count: int):
    """The first ``count`` UTKFace images, read into memory only (never written into the repository)."""
    faces = []
    with tarfile.open(REAL_ARCHIVE) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                faces.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
            if len(faces) == count:
                return faces
    return faces


@pytest.mark.real_data
def test_detect_faces_finds_each_face(checkpoint, tmp_path, capsys):
    pytest.importorskip("cv2")
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"{REAL_ARCHIVE} is absent")
    try:
        FaceDetector()
    except UserError as err:
        pytest.skip(str(err))  # OpenCV 5 has no Haar cascades
    first, second = _utkface_faces(2)
    photo = Image.new("RGB", (700, 400), (90, 120, 150))  # two faces on a plain background, as in a group photo
    photo.paste(first, (60, 100))
    photo.paste(second.resize((160, 160)), (420, 60))
    photo.save(tmp_path / "group.jpg", quality=95)

    code, out, err = run_cli(["--ckpt", checkpoint, tmp_path / "group.jpg", "--detect_faces", "--output",
                              tmp_path / "faces.json", "--annotate", tmp_path / "annotated"], capsys)
    assert code == 0, err
    records = json.loads((tmp_path / "faces.json").read_text())
    assert len(records) == 2 and all(r["error"] is None for r in records), records
    for record, (left, top, side) in zip(records, [(60, 100, 200), (420, 60, 160)]):
        x, y, w, h = record["face_box"]
        centre_x, centre_y = x + w / 2, y + h / 2
        assert left < centre_x < left + side and top < centre_y < top + side  # the box is on the pasted face
    with Image.open(tmp_path / "annotated" / "group.jpg") as copy:
        assert copy.size == photo.size
