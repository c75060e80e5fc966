"""Scanning folders: UTKFace names, odd files, cheap checks, and the one-line report of what was skipped."""

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.synthetic import face_name, make_face_image

from project.data.scan import check_image_file, parse_name, scan_utkface


@pytest.mark.parametrize(
    "name, fields",
    [
        ("25_0_1_20170116174525125.jpg.chip.jpg", (25, 0, 1)),
        ("39_1_20170116174525125.jpg.chip.jpg", (39, 1, None)),  # the real files without a race field
        (" 61_1_20170109142408075.jpg.chip.jpg", (61, 1, None)),  # stray leading space
        ("7 _0_2_20170109142408075.jpg.chip.jpg", (7, 0, 2)),  # stray space inside the age field
        ("116_1_0_20170120134921760.jpg.chip.jpg", (116, 1, 0)),
        ("40_3_9_20170120134921760.jpg", (40, None, None)),  # codes that do not exist: unknown
        ("notes.txt", None),
        ("abc_1_0_2017.jpg", None),
        ("25.jpg", None),
    ],
)
def test_parse_name(name, fields):
    assert parse_name(name) == fields


def test_scan_skips_and_reports_what_cannot_be_used(tmp_path, utkface_dir):
    rng = np.random.default_rng(1)
    make_face_image(30, rng).save(utkface_dir / face_name(39, 900, race=None), "JPEG")
    make_face_image(30, rng).save(utkface_dir / (" " + face_name(30, 901)), "JPEG")
    (utkface_dir / "notes.txt").write_text("not an image")
    (utkface_dir / ("._" + face_name(20, 902))).write_bytes(b"\x00\x05\x16\x07")
    make_face_image(30, rng).save(utkface_dir / face_name(130, 903), "JPEG")  # age outside the bins
    (utkface_dir / face_name(40, 904)).write_bytes(b"")  # empty
    good = utkface_dir / face_name(40, 905)
    make_face_image(40, rng).save(good, "JPEG")
    (utkface_dir / face_name(41, 906)).write_bytes(good.read_bytes()[:300])  # truncated
    (utkface_dir / face_name(42, 907)).write_bytes(b"this is text, not a JPEG")
    os.symlink(tmp_path / "missing.jpg", utkface_dir / face_name(43, 908))  # dangling link
    (utkface_dir / "sub").mkdir()
    make_face_image(44, rng).save(utkface_dir / "sub" / face_name(44, 909), "JPEG")  # same name twice
    make_face_image(44, rng).save(utkface_dir / face_name(44, 909), "JPEG")

    scan = scan_utkface(utkface_dir)

    names = {Path(item.relpath).name for item in scan.items}
    assert face_name(39, 900, race=None) in names
    assert " " + face_name(30, 901) in names
    assert len(scan.items) == 60 + 4
    reasons = dict(scan.skipped)
    assert reasons["notes.txt"] == "not an image file name"
    assert reasons["._" + face_name(20, 902)] == "macOS metadata file"
    assert reasons[face_name(130, 903)] == "age 130 outside 0-124"
    assert reasons[face_name(40, 904)] == "empty file"
    assert "truncated" in reasons[face_name(41, 906)]
    assert reasons[face_name(42, 907)] == "not a JPEG or PNG image"
    assert "dangling" in reasons[face_name(43, 908)] or "unreadable" in reasons[face_name(43, 908)]
    assert reasons[f"sub/{face_name(44, 909)}"] == f"duplicate of {face_name(44, 909)}"
    summary = scan.skipped_summary()
    assert summary.startswith(f"skipped {len(scan.skipped)} of {len(scan.items) + len(scan.skipped)} files")
    assert "\n" not in summary


def test_items_carry_their_age_group_gender_and_ethnicity(utkface_dir):
    items = scan_utkface(utkface_dir).items
    assert [item.relpath for item in items] == sorted(item.relpath for item in items)
    assert all(item.group == item.age // 25 for item in items)
    assert {item.gender for item in items} == {0, 1} and {item.ethnicity for item in items} == {0}


def test_png_and_other_formats_pass_the_cheap_check(tmp_path):
    image = make_face_image(30, np.random.default_rng(0))
    image.save(tmp_path / "x.png", "PNG")
    image.save(tmp_path / "x.webp", "WEBP")
    assert check_image_file(tmp_path / "x.png") is None
    assert check_image_file(tmp_path / "x.webp") is None  # checked by decoding it before training instead
