"""plots.py: every figure from small handmade inputs, and write_run_plots on a real (tiny) run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from project.config.settings import DataSettings
from project.data.datamodule import UTKFaceDataModule
from project.models.checkpoint import load_trained_net
from project.training.plots import (
    choose_examples,
    plot_age_distribution,
    plot_age_errors,
    plot_confusion_matrix,
    plot_prediction_grid,
    plot_training_curves,
    read_epoch_metrics,
    write_run_plots,
)

CSV_HEADER = "epoch,step,test_acc,train_acc,train_f1,train_loss,val_acc,val_f1,val_loss\n"


def assert_png(path: Path, max_bytes: int = 400_000) -> None:
    assert path.is_file() and 0 < path.stat().st_size < max_bytes
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()


@pytest.fixture(scope="module")
def finished_run(trained_run):
    """The shared one-epoch run, and the set-up DataModule and trained network the training run held."""
    config = json.loads((trained_run / "run_config.json").read_text())
    trained = load_trained_net(next((trained_run / "checkpoints").glob("best-*.ckpt")))
    data = DataSettings(data_dir=Path(config["data_dir"]), cache_dir=Path(config["cache_dir"]), batch_size=8, seed=42,
                        num_workers=0, split_file=trained_run / "split.json", strict_data=False, feature_cache=False)
    datamodule = UTKFaceDataModule(data, trained.net.settings.input)
    datamodule.setup()
    return trained_run, datamodule, trained, json.loads((trained_run / "test_metrics.json").read_text())


def test_write_run_plots_writes_all_four(finished_run, tmp_path):
    trained_run, datamodule, model, test_metrics = finished_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_bytes((trained_run / "metrics.csv").read_bytes())
    paths = write_run_plots(run_dir, datamodule, model, test_metrics)
    assert [p.name for p in paths] == ["age_distribution.png", "training_curves.png", "confusion_matrix.png",
                                       "test_predictions.png", "age_errors.png"]
    for path in paths:
        assert path.parent == run_dir / "plots"
        assert_png(path)


def test_write_run_plots_skips_what_is_missing(finished_run, tmp_path, caplog):
    _, datamodule, model, _ = finished_run
    paths = write_run_plots(tmp_path, datamodule, model, test_metrics=None, max_grid=4)  # no metrics.csv
    assert [p.name for p in paths] == ["age_distribution.png", "test_predictions.png"]
    assert all(name in caplog.text for name in ("training_curves.png", "confusion_matrix.png", "age_errors.png"))


def test_age_distribution(tmp_path):
    ages = np.random.default_rng(0).integers(0, 117, 500)
    counts = {"train": [300, 90, 40, 10, 1], "val": [30, 9, 4, 1, 0], "test": [33, 10, 4, 1, 1]}
    assert_png(plot_age_distribution(ages, counts, tmp_path / "ages.png"))


def test_training_curves_from_separate_rows_with_one_epoch(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(CSV_HEADER + "0,6,,,,,0.2,0.1,1.6\n0,6,,0.3,0.2,1.7,,,\n1,7,0.25,,,,,,\n")  # + a test row
    assert read_epoch_metrics(metrics)["train_loss"] == {0: 1.7}
    assert read_epoch_metrics(metrics)["val_acc"] == {0: 0.2}
    assert_png(plot_training_curves(metrics, tmp_path / "curves.png"))


def test_training_curves_average_by_epoch_and_ignore_nan(tmp_path):
    rows = "".join(f"{e},{e},,,,,{0.5 + e / 20},nan,{1 - e / 10}\n{e},{e},,{0.6 + e / 20},0.5,{1.2 - e / 10},,,\n"
                   for e in range(5))
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(CSV_HEADER + rows + "4,4,,,,,0.9,,\n")  # a second val_acc for epoch 4
    read = read_epoch_metrics(metrics)
    assert list(read["val_loss"]) == [0, 1, 2, 3, 4] and "val_f1" not in read
    assert read["val_acc"][4] == pytest.approx((0.7 + 0.9) / 2)
    assert_png(plot_training_curves(metrics, tmp_path / "curves.png"))


def test_confusion_matrix_with_an_empty_row(tmp_path):
    confusion = [[5, 1, 0, 0, 0], [2, 7, 1, 0, 0], [0, 1, 3, 1, 0], [0, 0, 1, 2, 0], [0, 0, 0, 0, 0]]
    assert_png(plot_confusion_matrix(confusion, tmp_path / "confusion.png"))


def test_prediction_grid_from_arrays_and_images(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(5)]
    images[0] = Image.fromarray(images[0]).convert("L")
    path = plot_prediction_grid(images, [0, 1, 2, "75-99", 4], [0, 2, 2, "75-99", 1], [0.9, 0.5, 0.7, 0.4, 0.3],
                                tmp_path / "grid.png")
    assert_png(path)


def test_examples_mix_mistakes_and_right_ones():
    correct = [True, False, True, True, False, False, True, True]
    chosen = choose_examples(correct, 4)
    assert chosen == [1, 4, 0, 2]  # half mistakes (first ones), half right ones
    assert sorted(choose_examples([True, False, False, False], 3)) == [0, 1, 2]  # few right: more mistakes
    assert choose_examples([True] * 3, 16) == [0, 1, 2]


SLICES = [{"slice": "gender", "value": "male", "count": 40, "accuracy": 0.8},
          {"slice": "ethnicity", "value": "unknown", "count": 3, "accuracy": 0.33},
          {"slice": "age band", "value": "80+", "count": 9, "accuracy": 0.55}]


def test_age_errors_with_and_without_ages(tmp_path):
    by_age = {str(age): {"count": 3, "mae": abs(age - 40) / 10, "mean_signed_error": (40 - age) / 10}
              for age in range(1, 100, 3)}
    assert_png(plot_age_errors(by_age, SLICES, 0.78, tmp_path / "with_ages.png"))
    assert_png(plot_age_errors(None, SLICES, None, tmp_path / "groups_only.png"))  # the notebook recipe
