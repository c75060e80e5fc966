"""predict.py: the command line on images of every kind, its outputs, exit codes, entry points and faces."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.photos import IMAGE_MODES, utkface_faces
from helpers.run_if import face_detector, real_data
from PIL import Image

from project.core.age_groups import GROUP_LABELS
from project.inference.writers import CSV_COLUMNS
from project.predict import main


def run_cli(argv, capsys):
    """Run ``predict.py`` in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_outputs_agree_with_the_api(predictor, checkpoint, photo_dir, tmp_path, capsys):
    annotated = tmp_path / "annotated"
    code, out, err = run_cli(["--ckpt", checkpoint, photo_dir, photo_dir / "notes.txt", "--output",
                              tmp_path / "out.csv", "--annotate", annotated, "--device", "cpu", "--no-detect_faces"],
                             capsys)
    assert code == 0
    assert "corrupt.jpg: not a readable image" in err and "notes.txt" in err
    assert out.splitlines()[0] == f"model: checkpoint {checkpoint.name}"  # every answer names its model
    assert out.splitlines()[1].split() == ["file", "group", "age", "(interval)", *GROUP_LABELS]

    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_COLUMNS
    by_name = {Path(row["source"]).name: row for row in rows}
    assert sorted(by_name) == sorted(IMAGE_MODES + ["corrupt.jpg", "notes.txt"])  # folder walked, .txt only if named
    assert by_name["corrupt.jpg"]["error"] and not by_name["corrupt.jpg"]["group"]

    api = {Path(p.source).name: p for p in predictor.predict([photo_dir / name for name in IMAGE_MODES],
                                                             face_detector=None)}
    for name in IMAGE_MODES:
        row = by_name[name]
        probabilities = [float(row[f"p_{label}"]) for label in GROUP_LABELS]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5) and row["error"] == ""
        assert row["group"] == api[name].group
        assert float(row["age"]) == pytest.approx(api[name].age, abs=0.05) and row["age_low"] and row["age_high"]
        assert probabilities == pytest.approx([api[name].probabilities[label] for label in GROUP_LABELS], abs=1e-6)
        with Image.open(annotated / name) as copy, Image.open(photo_dir / name) as original:
            expected = original.size[::-1] if name == "exif_rotated.jpg" else original.size  # the upright size
            assert copy.size == expected
    assert not (annotated / "corrupt.jpg").exists()

    code, _, _ = run_cli(["--ckpt", checkpoint, photo_dir, "--output", tmp_path / "out.json", "--no-detect_faces"],
                         capsys)
    records = json.loads((tmp_path / "out.json").read_text())
    assert code == 0 and len(records) == len(IMAGE_MODES) + 1
    for record in records:
        assert set(record) == {"source", "group", "group_index", "confidence", "probabilities", "face_box", "error",
                               "age", "age_interval", "face_score", "landmarks"}
        if record["error"] is None:
            assert record["age"] == pytest.approx(api[Path(record["source"]).name].age)
            assert record["age_interval"][0] <= record["age"] <= record["age_interval"][1]
            assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert record["probabilities"] == pytest.approx(api[Path(record["source"]).name].probabilities, abs=1e-6)


def test_cli_exit_codes(checkpoint, photo_dir, tmp_path, capsys):
    code, _, err = run_cli(["--ckpt", checkpoint, photo_dir / "corrupt.jpg", photo_dir / "notes.txt",
                            "--no-detect_faces"], capsys)
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
                             str(photo_dir / "rgb.png"), "--no-detect_faces"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert script.returncode == 0, script.stderr
    assert "rgb.png" in script.stdout
    module = subprocess.run([sys.executable, "-m", "project.predict", "--ckpt", str(tmp_path / "missing.ckpt"),
                             str(photo_dir)], cwd=REPO, capture_output=True, text=True)
    assert module.returncode == 2
    assert module.stderr.startswith("predict.py: error: --ckpt") and module.stderr.count("\n") == 1


@pytest.mark.parametrize("module, detector", [("dlib", "hog"), ("cv2", "haar")])
def test_a_missing_faces_extra_is_a_one_line_error(monkeypatch, checkpoint, photo_dir, capsys, module, detector):
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import dlib`` / ``import cv2`` raise ImportError
    code, _, err = run_cli(["--ckpt", checkpoint, photo_dir, "--detect_faces", "--face_detector", detector], capsys)
    assert code == 2 and "pip install -e .[faces]" in err and err.count("\n") == 1


@real_data
def test_detect_faces_finds_each_face(checkpoint, tmp_path, capsys):
    face_detector()
    first, second = utkface_faces(2)
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
