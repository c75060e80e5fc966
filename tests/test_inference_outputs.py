"""What prediction writes: the table, CSV and JSON rows, annotated copies, and the file list it reads."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from project.common.errors import UserError
from project.core.age_groups import GROUP_LABELS
from project.inference.drawing import annotate, save_image
from project.inference.inputs import find_images, unique_names
from project.inference.predictor import Prediction
from project.inference.writers import CSV_COLUMNS, format_table, write_output

PROBABILITIES = dict(zip(GROUP_LABELS, [0.1, 0.6, 0.2, 0.05, 0.05]))
PREDICTIONS = [
    Prediction("a.jpg", "25-49", 1, 0.6, PROBABILITIES, face_box=(10, 20, 30, 40), age=31.26,
               age_interval=(24.4, 39.0)),
    Prediction("b.jpg", error="no face detected"),
]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_outputs_hold_every_row_and_are_written_whole(tmp_path, suffix):
    path = tmp_path / "out" / f"predictions{suffix}"
    write_output(PREDICTIONS, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    if suffix == ".json":
        records = json.loads(path.read_text())
        assert records[0]["face_box"] == [10, 20, 30, 40] and records[1]["error"] == "no face detected"
        assert records[0]["age"] == 31.26 and records[0]["age_interval"] == [24.4, 39.0]
        assert records[1]["age"] is None and records[1]["age_interval"] is None
        return
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_COLUMNS
    assert (rows[0]["face_x"], rows[0]["p_25-49"], rows[0]["error"]) == ("10", "0.6", "")
    assert (rows[0]["age"], rows[0]["age_low"], rows[0]["age_high"]) == ("31.3", "24.4", "39.0")
    assert rows[1]["group"] == "" and rows[1]["error"] == "no face detected"


def test_the_table_has_a_row_per_prediction():
    lines = format_table(PREDICTIONS).splitlines()
    assert lines[0].split() == ["file", "face", "(x,y,w,h)", "group", "age", "(interval)", *GROUP_LABELS]
    assert lines[2].split()[:5] == ["a.jpg", "10,20,30,40", "25-49", "31", "y"] and "(24-39)" in lines[2]
    assert lines[3].endswith("error: no face detected")
    groups_only = format_table([Prediction("c.jpg", "0-24", 0, 0.9, PROBABILITIES)]).splitlines()
    assert groups_only[0].split() == ["file", "group", *GROUP_LABELS]  # no age column for models without ages


def test_an_annotated_copy_keeps_the_size_and_draws_on_the_face(tmp_path):
    image = Image.new("RGB", (200, 120), (40, 40, 40))
    drawn = annotate(image, PREDICTIONS[:1])
    assert drawn.size == image.size and drawn.getpixel((10, 40)) != (40, 40, 40)  # the box's left edge
    assert image.getpixel((10, 40)) == (40, 40, 40)  # the original is untouched
    save_image(drawn, tmp_path / "photo.heic")  # a format Pillow cannot write: saved as PNG beside it
    assert (tmp_path / "photo.heic.png").is_file()


def test_inputs_are_files_named_and_images_under_folders(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for name in ("photos/a.jpg", "photos/sub/b.PNG", "photos/notes.txt", "photos/._c.jpg", "x.jpg"):
        (tmp_path / name).write_bytes(b"")
    found = find_images([str(tmp_path / "photos"), str(tmp_path / "x.jpg")])
    assert [name.as_posix() for _, name in found] == ["a.jpg", "sub/b.PNG", "x.jpg"]
    assert unique_names([Path("a.jpg"), Path("A.jpg"), Path("a.jpg")]) == [Path("a.jpg"), Path("A_2.jpg"),
                                                                           Path("a_3.jpg")]  # case-blind file systems
    with pytest.raises(UserError, match="does not exist"):
        find_images([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        find_images([str(tmp_path / "empty")])
