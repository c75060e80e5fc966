"""Labels tables: your own faces as path,age[,gender,ethnicity] rows, bad rows skipped and reported."""

import numpy as np
import pytest
from helpers.synthetic import make_face_image

from project.common.errors import UserError
from project.data.sources import resolve_data_dir, scan_source


def write_faces(folder, names):
    rng = np.random.default_rng(0)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make_face_image(30, rng).save(path, "PNG" if name.endswith(".png") else "JPEG")


def test_a_labels_table_lists_faces_with_their_labels_and_skips_every_bad_row(tmp_path, cache_dir):
    write_faces(tmp_path, ["a.jpg", "people/b.png", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 40)  # no end-of-image marker
    table = tmp_path / "labels.csv"
    table.write_text("path,age,gender,ethnicity\n"
                     "a.jpg,31,female,Asian\n"
                     "people/b.png,2.5,m,\n"
                     "c.jpg,70,,4\n"
                     "missing.jpg,20,,\n"
                     "d.jpg,forty,,\n"
                     "e.jpg,-3,,\n"
                     "f.jpg,130,,\n"
                     "a.jpg,32,,\n"
                     "g.jpg,40,robot,\n"
                     "broken.jpg,50,,\n"
                     "notes.txt,50,,\n")
    assert resolve_data_dir(table, cache_dir) == table
    scan = scan_source(table)
    assert [(i.relpath, i.age, i.group, i.gender, i.ethnicity) for i in scan.items] == [
        ("a.jpg", 31, 1, 1, 2), ("people/b.png", 2, 0, 0, None), ("c.jpg", 70, 2, None, 4)]
    assert scan.root == tmp_path
    reasons = dict(scan.skipped)
    assert reasons == {
        "labels.csv:5 missing.jpg": "file not found",
        "labels.csv:6 d.jpg": "age 'forty' is not a number",
        "labels.csv:7 e.jpg": "age -3 is negative",
        "labels.csv:8 f.jpg": "age 130 outside 0-124",
        "labels.csv:9 a.jpg": "duplicate of row 2",
        "labels.csv:10 g.jpg": "gender 'robot' is not one of male, female, 0 or 1",
        "labels.csv:11 broken.jpg": "truncated JPEG (no end-of-image marker)",
        "labels.csv:12 notes.txt": "not an image file name",
    }
    assert scan.skipped_summary().startswith("skipped 8 of 11 files")


def test_tab_separated_tables_work_too(tmp_path):
    write_faces(tmp_path, ["x.jpg"])
    (tmp_path / "labels.tsv").write_text("age\tpath\n45\tx.jpg\n")  # any column order
    assert [(i.relpath, i.age) for i in scan_source(tmp_path / "labels.tsv").items] == [("x.jpg", 45)]


@pytest.mark.parametrize("content, message", [
    ("name,years\nx.jpg,4\n", "is not a labels table: .* missing path, age"),
    ("path,age\nx.jpg,4\n", "no usable rows in the labels table .*file not found"),
    ("path,age\n", "has no rows"),
])
def test_a_file_that_is_not_a_usable_labels_table_is_one_line(tmp_path, content, message):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        scan_source(tmp_path / "labels.csv")
