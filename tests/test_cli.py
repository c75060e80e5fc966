"""The training command line: entry points, re-test, resume refusals, and every user error in one line."""

import json
import os
import subprocess
import sys
import tarfile

import pytest
from helpers.config import fast_flags, run_dir, settings_for
from helpers.paths import REPO
from helpers.synthetic import write_synthetic_utkface

from project.cli.train import main
from project.common.errors import UserError


def run_cli(argv, capsys):
    """Exit code and the error line; progress bars and warnings may precede it, a traceback may not."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("lit_classifier_main.py: error:")]
    assert len(errors) == 1 and err.endswith(errors[0]), err
    return exit_info.value.code, errors[0]


def test_script_and_module_entry_points_show_help():
    for command in ([sys.executable, "project/lit_classifier_main.py", "--help"],
                    [sys.executable, "-m", "project.lit_classifier_main", "--help"]):
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        for flag in ("--data_dir", "--batch_size", "--max_epochs", "--patience", "--lr", "--accelerator",
                     "--devices", "--precision", "--default_root_dir", "--seed", "--image_size", "--num_workers",
                     "--backbone_weights", "--ckpt_path", "--test_only", "--no_feature_cache", "--recipe"):
            assert flag in result.stdout
        assert "--kill_at" not in result.stdout


def test_fit_then_test_only_from_an_archive(utkface_archive, cache_dir, runs, tmp_path):
    flags = fast_flags(utkface_archive, cache_dir, runs, "--recipe", "notebook", "--max_epochs", "1")
    assert main(flags) == 0
    metrics = json.loads((run_dir(runs) / "test_metrics.json").read_text())
    retest = tmp_path / "retest.json"
    assert main(flags + ["--test_only", "--ckpt_path", metrics["checkpoint"], "--metrics_json", str(retest)]) == 0
    again = json.loads(retest.read_text())
    assert again["split_file"] == str(run_dir(runs).resolve() / "split.json")
    for key in ("test_acc", "test_loss", "confusion_matrix"):
        assert again[key] == metrics[key]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch_size", "-4"], "--batch_size must be at least 1"),
        (["--image_size", "16"], "--image_size must be at least 32"),
        (["--accelerator", "tpu9"], "invalid choice"),
        (["--devices", "64"], "asks for more CPU devices"),
        (["--devices", "0"], "--devices must be a positive number"),
        (["--test_only"], "--test_only needs --ckpt_path"),
        (["--ckpt_path", "/no/such.ckpt", "--test_only"], "does not exist"),
        (["--backbone_weights", "/no/such.pth"], "no such file"),
        (["--max_epochs", "0"], "--max_epochs must be at least 1"),
        (["--lr", "0"], "--lr must be positive"),
        (["--resume"], "--resume: no lightning_logs/version_*/checkpoints/last.ckpt"),
        (["--photo_views", "--recipe", "notebook"], "--photo_views needs mirror images"),
        (["--split", "random", "--copy_labels", "keep"], "with --split random it would be ignored"),
    ],
)
def test_bad_flags_fail_early_with_one_line(flags, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(flags + extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_copy_labels_default_to_drop_and_shape_a_grouped_split(flags, tmp_path):
    assert settings_for(flags).data.copy_labels == "drop"
    assert settings_for(flags + ["--copy_labels", "median"]).data.copy_labels == "median"
    assert settings_for(flags + ["--split", "random"]).data.copy_labels == "drop"  # recorded, unused
    split_file = tmp_path / "split.json"
    split_file.write_text("{}")
    with pytest.raises(UserError, match="with --split_file it would be ignored"):
        settings_for(flags + ["--split_file", str(split_file), "--copy_labels", "median"])


def test_missing_data_dir_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--default_root_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--data_dir" in capsys.readouterr().err


def test_unwritable_output_folder_fails_before_any_work(flags, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(flags + ["--default_root_dir", str(blocker / "runs")], capsys)
    assert code == 2 and "cannot write to --default_root_dir" in err


def test_resume_refuses_what_would_not_continue_the_same_run(flags, capsys):
    assert main(flags + ["--max_epochs", "1"]) == 0
    code, err = run_cli(flags + ["--max_epochs", "3", "--resume"], capsys)
    assert code == 2 and "planned for 1 epochs; resume with --max_epochs 1" in err
    code, err = run_cli(flags + ["--max_epochs", "1", "--resume", "--image_size", "64"], capsys)
    assert code == 2 and "trained at --image_size 32" in err
    code, err = run_cli(flags + ["--max_epochs", "1", "--resume", "--photo_views"], capsys)
    assert code == 2 and "trained without --photo_views" in err


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
    for path in sorted(folder.iterdir())[3:]:
        path.unlink()
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
def test_unusable_datasets_exit_2_with_one_line(tmp_path, cache_dir, runs, capsys, make, message):
    code, err = run_cli(fast_flags(make(tmp_path), cache_dir, runs, "--max_epochs", "1"), capsys)
    assert code == 2
    assert message in err


def test_bad_items_are_skipped_reported_once_and_listed(flags, runs, caplog, utkface_dir):
    (utkface_dir / "notes.txt").write_text("x")
    (utkface_dir / "30_1_0_20170116000000001.jpg.chip.jpg").write_bytes(b"")
    (utkface_dir / "31_1_0_20170116000000002.jpg.chip.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    assert main(flags + ["--max_epochs", "1"]) == 0
    reports = [r for r in caplog.records if "skipped 3 of 63 files" in r.getMessage()]
    assert len(reports) == 1  # once, up front, not once per dataloader or epoch
    listed = (run_dir(runs) / "skipped_files.txt").read_text().splitlines()
    assert len(listed) == 3 and any("truncated JPEG" in line for line in listed)


def test_strict_data_refuses_bad_items(flags, capsys, utkface_dir):
    (utkface_dir / "notes.txt").write_text("x")
    code, err = run_cli(flags + ["--strict_data"], capsys)
    assert code == 2 and "--strict_data: skipped 1 of 61 files" in err


def test_debug_shows_the_traceback(tmp_path, cache_dir, runs):
    with pytest.raises(UserError, match="no UTKFace images"):
        main(fast_flags(make_empty_folder(tmp_path), cache_dir, runs, "--debug"))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(flags, runs, capsys, monkeypatch):
    """The 2nd epoch's checkpoint write fails with ENOSPC: one-line error, epoch 1's last.ckpt still loads."""
    import errno

    import torch
    from fsspec.implementations.local import LocalFileOpener

    from project.lit_classifier_main import LitClassifier

    real_write = LocalFileOpener.write
    calls = {"n": 0}

    def failing_write(self, data):
        if str(self.path).endswith(".ckpt"):
            calls["n"] += 1
            if calls["n"] > 2:  # epoch 0 writes best + last; everything after that fails
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, data)

    monkeypatch.setattr(LocalFileOpener, "write", failing_write)
    with pytest.raises(SystemExit) as exit_info:
        main(flags + ["--max_epochs", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "Traceback" not in "\n".join(err)
    last = run_dir(runs) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 0
    LitClassifier.load_from_checkpoint(last)
