"""Bad data and bad environments through the real command line: exit code 2, one line, no traceback."""

import os
import tarfile

import pytest

from conftest import write_synthetic_utkface
from project.cli import main


def run_cli(args, capsys):
    """Exit code and the error line; progress bars and warnings may precede it, a traceback may not."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("lit_classifier_main.py: error:")]
    assert len(errors) == 1 and err.endswith(errors[0])
    return exit_info.value.code, errors[0]


def common(tmp_path, data_dir):
    return ["--data_dir", str(data_dir), "--image_size", "32", "--backbone_weights", "none", "--cache_dir",
            str(tmp_path / "cache"), "--default_root_dir", str(tmp_path / "runs"), "--num_workers", "0",
            "--max_epochs", "1", "--precision", "32"]


def make_not_utkface_tar(tmp_path):
    source = tmp_path / "photos"
    source.mkdir()
    (source / "holiday.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 100 + b"\xff\xd9")
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="photos")
    return archive


def make_corrupt_tar(tmp_path):
    archive = tmp_path / "UTKFace.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(2000))
    return archive


def make_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def make_folder_without_utkface_names(tmp_path):
    folder = tmp_path / "misc"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    (folder / "readme.txt").write_text("hello")
    return folder


def make_too_few(tmp_path):
    folder = tmp_path / "few"
    write_synthetic_utkface(folder, per_group=1)
    return folder


@pytest.mark.parametrize(
    "make, message",
    [
        (make_empty_folder, "no UTKFace images"),
        (make_folder_without_utkface_names, "no UTKFace images"),
        (make_not_utkface_tar, "no UTKFace images"),
        (make_corrupt_tar, "not a readable tar archive"),
        (make_too_few, "too few images to split"),
    ],
)
def test_unusable_datasets_exit_2_with_one_line(tmp_path, capsys, make, message):
    code, err = run_cli(common(tmp_path, make(tmp_path)), capsys)
    assert code == 2
    assert message in err


def test_bad_items_are_skipped_reported_once_and_listed(tmp_path, caplog, utkface_dir):
    (utkface_dir / "notes.txt").write_text("x")
    (utkface_dir / "30_1_0_20170116000000001.jpg.chip.jpg").write_bytes(b"")
    (utkface_dir / "31_1_0_20170116000000002.jpg.chip.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    assert main(common(tmp_path, utkface_dir)) == 0
    reports = [r for r in caplog.records if "skipped 3 of 63 files" in r.getMessage()]
    assert len(reports) == 1  # once, up front, not once per dataloader or epoch
    listed = (tmp_path / "runs/lightning_logs/version_0/skipped_files.txt").read_text().splitlines()
    assert len(listed) == 3 and any("truncated JPEG" in line for line in listed)


def test_strict_data_refuses_bad_items(tmp_path, capsys, utkface_dir):
    (utkface_dir / "notes.txt").write_text("x")
    code, err = run_cli(common(tmp_path, utkface_dir) + ["--strict_data"], capsys)
    assert code == 2 and "--strict_data: skipped 1 of 61 files" in err


def test_debug_shows_the_traceback(tmp_path):
    from project.errors import UserError

    with pytest.raises(UserError, match="no UTKFace images"):
        main(common(tmp_path, make_empty_folder(tmp_path)) + ["--debug"])
