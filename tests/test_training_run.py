"""A training run in-process, from the same settings the command line builds: files, recipes, resumption."""

import csv
import dataclasses
import json
import math

import pytest
import torch
from helpers.config import fast_flags, run_dir, settings_for
from helpers.models import as_release_0_1_0
from helpers.synthetic import write_synthetic_utkface

from project.config.recipes import DEFAULT, RECIPES
from project.core import calibration
from project.lit_classifier_main import LitClassifier
from project.training.run import retest, train


def test_fit_then_test_writes_the_run_files_and_a_retest_matches(flags, runs):
    settings = settings_for(flags + ["--max_epochs", "3"])
    metrics = train(settings)
    folder = run_dir(runs)
    for key in ("test_acc", "test_f1", "test_loss", "recall", "confusion_matrix", "checkpoint", "epochs_trained"):
        assert key in metrics
    assert json.loads((folder / "test_metrics.json").read_text()) == metrics
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["test_images"] == 5
    assert metrics["checkpoint"].split("/")[-1].startswith("best-")
    assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "metrics.csv").is_file()
    assert json.loads((folder / "run_config.json").read_text()) == json.loads(json.dumps(settings.record()))
    split = json.loads((folder / "split.json").read_text())
    assert len(split["test"]) == 5 and len(split["val"]) == 5
    assert sorted(p.name for p in (folder / "plots").iterdir()) == [
        "age_distribution.png", "age_errors.png", "confusion_matrix.png", "test_predictions.png",
        "training_curves.png"]
    assert metrics["ages"]["point"] in ("median", "mean")
    assert metrics["test_mae"] == pytest.approx(metrics["ages"]["mae"])
    with open(folder / "slices.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(metrics["slices"]) > 0

    again = retest(settings, metrics["checkpoint"], folder / "split.json", folder / "retest.json")
    assert json.loads((folder / "retest.json").read_text()) == again
    assert (folder / "retest.slices.csv").read_text() == (folder / "slices.csv").read_text()
    for key in ("test_acc", "test_loss", "confusion_matrix", "temperature", "ages", "slices"):
        assert again[key] == metrics[key], key

    # a split.json as release 0.4.0 wrote it (no split kind, copy policy or left-out files) re-tests identically
    old = {key: value for key, value in split.items() if key not in ("split", "copy_labels", "left_out")}
    (folder / "split-0.4.json").write_text(json.dumps(old))
    as_before = retest(settings, metrics["checkpoint"], folder / "split-0.4.json")
    for key in ("test_acc", "test_loss", "confusion_matrix", "ages", "slices"):
        assert as_before[key] == metrics[key], key


def test_a_run_without_its_split_json_retests_on_the_split_it_made(flags, runs, utkface_dir):
    """A file-by-file run (as every run before 0.5.0) re-tested after its split.json was lost: its run_config.json
    says how it split, so the re-derived split is its own, not today's grouped default."""
    original = sorted(utkface_dir.iterdir())[0]
    (utkface_dir / ("99_" + original.name.split("_", 1)[1])).write_bytes(original.read_bytes())
    metrics = train(settings_for(flags + ["--max_epochs", "1", "--split", "random"]))
    folder = run_dir(runs)
    assert json.loads((folder / "run_config.json").read_text())["split"] == "random"
    (folder / "split.json").unlink()
    again = retest(settings_for(flags), metrics["checkpoint"], None)  # the flags' default split is grouped
    assert again["split"] == "random"
    for key in ("test_acc", "test_loss", "confusion_matrix", "test_images"):
        assert again[key] == metrics[key], key


def test_a_run_reports_its_copies_and_keeps_them_apart_from_the_test(flags, runs, utkface_dir, capsys):
    """One synthetic face copied under another age: the run lists it in duplicates.csv, says so in its summary,
    and (``--copy_labels drop``) neither copy is trained, validated or tested on."""
    original = sorted(utkface_dir.iterdir())[0]
    copy = utkface_dir / ("99_" + original.name.split("_", 1)[1].replace("20170116", "20180116"))
    copy.write_bytes(original.read_bytes())
    metrics = train(settings_for(flags + ["--max_epochs", "1"]))
    folder = run_dir(runs)
    assert metrics["split"] == "grouped" and metrics["copies"].startswith("1 group of copies (2 of ")
    assert "Copies:          1 group of copies" in capsys.readouterr().out
    with open(folder / "duplicates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["file"] for row in rows) == sorted([original.name, copy.name])
    assert {row["kept"] for row in rows} == {"no: copy with another age"}
    split = json.loads((folder / "split.json").read_text())
    assert split["split"] == "grouped" and sorted(split["left_out"]) == sorted([original.name, copy.name])
    assert not {original.name, copy.name} & set(split["val"] + split["test"])


def test_cache_and_no_cache_give_the_same_metrics(flags, runs):
    cached = train(settings_for(flags + ["--max_epochs", "2"]))
    uncached = train(settings_for(flags + ["--max_epochs", "2", "--no_feature_cache"]))
    assert cached["feature_cache"] and uncached["feature_cache"] is None
    assert cached["test_acc"] == uncached["test_acc"]
    assert cached["confusion_matrix"] == uncached["confusion_matrix"]
    assert cached["test_loss"] == pytest.approx(uncached["test_loss"], abs=1e-4)


def test_photo_views_train_from_their_own_cache_and_are_never_built_for_a_retest(flags, runs, cache_dir):
    settings = settings_for(flags + ["--max_epochs", "2", "--photo_views"])
    cached = train(settings)
    views = sorted(json.loads(p.read_text())["view"] for p in (cache_dir / "features").glob("*.json"))
    assert views == ["mirrored", "original", "photo"]
    checkpoint = torch.load(cached["checkpoint"], weights_only=True)
    assert checkpoint["hyper_parameters"]["net"]["input"]["photo_views"] is True
    assert json.loads((run_dir(runs) / "run_config.json").read_text())["photo_views"] is True
    for path in (cache_dir / "features").glob("*"):
        path.unlink()
    folder = run_dir(runs)
    retest(settings, cached["checkpoint"], folder / "split.json", folder / "retest.json")
    views = sorted(json.loads(p.read_text())["view"] for p in (cache_dir / "features").glob("*.json"))
    assert views == ["mirrored", "original"]  # evaluation sees the faces and their mirror images only


def test_fast_dev_run(flags):
    metrics = train(settings_for(flags + ["--fast_dev_run"]))
    assert metrics["checkpoint"] == "(fast_dev_run: no checkpoint)" and metrics["test_images"] == 5


def test_the_default_recipe_trains_three_heads_with_adamw_and_a_one_cycle_schedule(flags, runs, cache_dir):
    train(settings_for(flags + ["--max_epochs", "2"]))
    checkpoint = torch.load(run_dir(runs) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["net"] == dataclasses.replace(
        DEFAULT.net, input=dataclasses.replace(DEFAULT.net.input, image_size=32)).to_dict()
    assert checkpoint["hyper_parameters"]["optimizer"] == DEFAULT.optimizer.to_dict()
    restored = LitClassifier.load_from_checkpoint(run_dir(runs) / "checkpoints" / "last.ckpt")
    assert len(restored.net.heads) == DEFAULT.net.ensemble_size > 1
    assert checkpoint["lr_schedulers"][0]["total_steps"] == 2 * math.ceil(50 / 8)
    caches = sorted(json.loads(p.read_text())["mirrored"] for p in (cache_dir / "features").glob("*.json"))
    assert caches == [False, True]  # the faces and their mirror images


def test_the_notebook_recipe_is_the_notebook(flags, runs):
    metrics = train(settings_for(flags + ["--recipe", "notebook", "--max_epochs", "1", "--lr", "5e-4"]))
    assert metrics["ages"] is None and "test_mae" not in metrics  # no per-year outputs: no ages, never made up
    assert metrics["slices"][0]["accuracy"] is not None and metrics["slices"][0]["mae"] is None
    config = json.loads((run_dir(runs) / "run_config.json").read_text())
    assert config["recipe"] == "notebook" and config["patience"] == 5 and config["lr"] == 5e-4
    hparams = torch.load(run_dir(runs) / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert (hparams["net"]["head"], hparams["net"]["target"], hparams["net"]["input"]["feature_layer"],
            hparams["net"]["input"]["mirror"]) == ("notebook", "group", "block5", False)
    assert hparams["optimizer"] == {"name": "adam", "lr": 5e-4, "weight_decay": 2e-3, "schedule": "constant"}


def test_a_run_resumes_with_the_model_and_recipe_it_started_with(flags, runs, monkeypatch):
    """A run interrupted under one head (say by an earlier release) continues with one head after the recipe
    changed to three, and keeps its own recipe when --recipe is not given."""
    monkeypatch.setitem(RECIPES, "default", dataclasses.replace(
        DEFAULT, net=dataclasses.replace(DEFAULT.net, ensemble_size=1),
        objective=dataclasses.replace(DEFAULT.objective, calibrate=False)))
    train(settings_for(flags + ["--max_epochs", "2"]))
    (run_dir(runs) / "test_metrics.json").unlink()
    monkeypatch.setitem(RECIPES, "default", DEFAULT)
    resumed = settings_for(flags + ["--max_epochs", "2", "--resume"])
    assert resumed.recipe == "default" and resumed.net.ensemble_size == 1 and not resumed.objective.calibrate
    assert train(resumed)["temperature"] == 1.0  # restores the one-head weights
    hparams = torch.load(run_dir(runs) / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["net"]["ensemble_size"] == 1 and not hparams["objective"]["calibrate"]
    notebook_root = runs.parent / "notebook"
    train(settings_for(flags + ["--recipe", "notebook", "--max_epochs", "1", "--default_root_dir", str(notebook_root)]))
    again = settings_for(flags + ["--resume", "--default_root_dir", str(notebook_root)])
    assert again.recipe == "notebook" and again.data.batch_size == 8 and again.trainer.patience == 5


@pytest.mark.slow
def test_a_run_of_release_0_1_0_resumes_to_the_same_end(flags, runs, tmp_path):
    """The last.ckpt of a run started by 0.1.0 (today's layout, flattened back) resumes as if never stopped."""
    reference = train(settings_for(flags + ["--recipe", "notebook", "--max_epochs", "2", "--default_root_dir",
                                            str(tmp_path / "reference")]))
    train(settings_for(flags + ["--recipe", "notebook", "--max_epochs", "1"]))
    last = run_dir(runs) / "checkpoints" / "last.ckpt"
    as_release_0_1_0(last, last)
    (run_dir(runs) / "test_metrics.json").unlink()
    resumed = train(settings_for(flags + ["--max_epochs", "2", "--resume"]))
    for key in ("test_acc", "test_loss", "best_val_acc", "confusion_matrix", "epochs_trained"):
        assert resumed[key] == reference[key], key


def test_a_fit_calibrates_ages_on_validation_and_reports_them_per_slice(flags, runs, monkeypatch):
    monkeypatch.setattr(calibration, "MIN_CALIBRATION_ITEMS", 1)  # the synthetic set has 5 validation images
    metrics = train(settings_for(flags + ["--max_epochs", "2"]))
    saved = torch.load(metrics["checkpoint"], weights_only=True)["age_calibration"]
    assert saved["level"] == 0.8 and saved["point"] in ("median", "mean") and saved["scale"] is not None
    ages = metrics["ages"]
    assert {"mae", "median_absolute_error", "cs5", "interval_coverage", "interval_width", "mae_by_group",
            "by_age"} <= set(ages) and metrics["test_interval_coverage"] == pytest.approx(ages["interval_coverage"])
    slices = {(row["slice"], row["value"]): row for row in metrics["slices"]}
    assert slices[("gender", "male")]["count"] + slices[("gender", "female")]["count"] == metrics["test_images"]
    assert sum(row["count"] for row in metrics["slices"] if row["slice"] == "age band") == metrics["test_images"]


def test_your_own_faces_from_a_labels_table(tmp_path, cache_dir, runs):
    """A CSV of images with any names, ages and optional gender/ethnicity trains end to end."""
    paths = write_synthetic_utkface(tmp_path / "my_faces" / "photos")
    rows = ["path,age,gender,ethnicity"]
    for index, path in enumerate(paths):
        renamed = path.with_name(f"person_{index:03d}.jpg")
        path.rename(renamed)
        age = path.name.split("_")[0]
        rows.append(f"photos/{renamed.name},{age},{'female' if index % 2 else 'male'},{'Asian' if index % 3 else ''}")
    table = tmp_path / "my_faces" / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    metrics = train(settings_for(fast_flags(table, cache_dir, runs, "--max_epochs", "1")))
    assert metrics["test_images"] == 5
    split = json.loads((run_dir(runs) / "split.json").read_text())
    assert all(name.startswith("photos/person_") for name in split["test"])
    ethnicities = {row["value"]: row["count"] for row in metrics["slices"] if row["slice"] == "ethnicity"}
    assert set(ethnicities) <= {"Asian", "unknown"} and sum(ethnicities.values()) == 5
