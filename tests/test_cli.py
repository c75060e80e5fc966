"""The command line end to end: fit + test, re-test, cache on/off, resume after SIGKILL, bad flags."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from project.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_dir(tmp_path, version=0):
    return tmp_path / "runs" / "lightning_logs" / f"version_{version}"


def read_metrics(tmp_path, version=0):
    return json.loads((run_dir(tmp_path, version) / "test_metrics.json").read_text())


def test_fit_then_test_writes_the_run_files(cli_args, tmp_path):
    assert main(cli_args["base"] + ["--max_epochs", "3"]) == 0
    folder = run_dir(tmp_path)
    metrics = read_metrics(tmp_path)
    for key in ("test_acc", "test_f1", "test_loss", "recall", "confusion_matrix", "checkpoint", "epochs_trained"):
        assert key in metrics
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["test_images"] == 5
    assert Path(metrics["checkpoint"]).name.startswith("best-")
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert (folder / "metrics.csv").is_file()
    split = json.loads((folder / "split.json").read_text())
    assert len(split["test"]) == 5 and len(split["val"]) == 5

    # A new process-like re-test of the best checkpoint gives exactly the saved numbers.
    retest = tmp_path / "retest.json"
    assert main(cli_args["base"] + ["--test_only", "--ckpt_path", metrics["checkpoint"],
                                    "--metrics_json", str(retest)]) == 0
    again = json.loads(retest.read_text())
    assert again["test_acc"] == metrics["test_acc"]
    assert again["test_loss"] == metrics["test_loss"]
    assert again["confusion_matrix"] == metrics["confusion_matrix"]


def test_cache_and_no_cache_give_the_same_metrics(cli_args, tmp_path):
    main(cli_args["base"] + ["--max_epochs", "2"])
    main(cli_args["base"] + ["--max_epochs", "2", "--no_feature_cache"])
    cached, uncached = read_metrics(tmp_path, 0), read_metrics(tmp_path, 1)
    assert cached["feature_cache"] and uncached["feature_cache"] is None
    assert cached["test_acc"] == uncached["test_acc"]
    assert cached["confusion_matrix"] == uncached["confusion_matrix"]
    assert cached["test_loss"] == pytest.approx(uncached["test_loss"], abs=1e-4)


def test_fast_dev_run(cli_args, tmp_path):
    assert main(cli_args["base"] + ["--fast_dev_run"]) == 0


def test_archive_input(utkface_archive, cache_dir, tmp_path):
    args = ["--data_dir", str(utkface_archive), "--image_size", "32", "--backbone_weights", "none",
            "--cache_dir", str(cache_dir), "--default_root_dir", str(tmp_path / "runs"), "--num_workers", "0",
            "--max_epochs", "1", "--precision", "32"]
    assert main(args) == 0
    assert read_metrics(tmp_path)["test_images"] == 5


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_same_metrics(cli_args, tmp_path):
    """Kill -9 in the middle of epoch 2, resume: the final metrics equal an uninterrupted run's."""
    reference = tmp_path / "reference"
    main(cli_args["base"] + ["--max_epochs", "4", "--default_root_dir", str(reference)])
    expected = json.loads((reference / "lightning_logs/version_0/test_metrics.json").read_text())

    command = [sys.executable, str(REPO / "project" / "lit_classifier_main.py")] + cli_args["base"] + [
        "--max_epochs", "4"]
    killed = subprocess.run(command + ["--kill_at", "2:3"], capture_output=True, text=True)
    assert killed.returncode == -9
    assert (run_dir(tmp_path) / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir(tmp_path) / "test_metrics.json").exists()
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = read_metrics(tmp_path)
    for key in ("test_acc", "test_loss", "best_val_acc", "confusion_matrix", "epochs_trained"):
        assert got[key] == expected[key], key


def test_script_and_module_entry_points_show_help():
    for command in ([sys.executable, "project/lit_classifier_main.py", "--help"],
                    [sys.executable, "-m", "project.lit_classifier_main", "--help"]):
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        for flag in ("--data_dir", "--batch_size", "--max_epochs", "--patience", "--lr", "--accelerator",
                     "--devices", "--precision", "--default_root_dir", "--seed", "--image_size", "--num_workers",
                     "--backbone_weights", "--ckpt_path", "--test_only", "--no_feature_cache"):
            assert flag in result.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch_size", "-4"], "--batch_size must be at least 1"),
        (["--image_size", "16"], "--image_size must be at least 32"),
        (["--accelerator", "tpu9"], "invalid choice"),
        (["--devices", "64"], "asks for more CPU devices"),
        (["--test_only"], "--test_only needs --ckpt_path"),
        (["--ckpt_path", "/no/such.ckpt", "--test_only"], "does not exist"),
        (["--backbone_weights", "/no/such.pth"], "no such file"),
        (["--max_epochs", "0"], "--max_epochs must be at least 1"),
    ],
)
def test_bad_flags_fail_early_with_one_line(cli_args, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args["base"] + extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_data_dir_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--default_root_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--data_dir" in capsys.readouterr().err


def test_unwritable_output_folder_fails_before_any_work(cli_args, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args["base"] + ["--default_root_dir", str(blocker / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write to --default_root_dir" in err and len(err.splitlines()) == 1


def test_disk_full_while_saving_keeps_the_previous_checkpoint(cli_args, capsys, tmp_path, monkeypatch):
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
        main(cli_args["base"] + ["--max_epochs", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "Traceback" not in "\n".join(err)
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True, map_location="cpu")
    assert state["epoch"] == 0
    LitClassifier.load_from_checkpoint(last)
