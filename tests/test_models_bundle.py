"""The bundled form of a model: written from a checkpoint, read back without Lightning, predicting the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from project.bundle import main as bundle_main
from project.common.errors import UserError
from project.data.split import split_names
from project.models.backbone import layers_run
from project.models.bundle import (
    RECORD_FILE,
    STORED_DTYPE,
    TEST_FILES,
    WEIGHTS_FILE,
    listed_test_files,
    load_bundle,
    write_bundle,
)
from project.models.checkpoint import load_trained_net


@pytest.fixture(scope="module")
def bundle_dir(checkpoint, tmp_path_factory) -> Path:
    return write_bundle(load_trained_net(checkpoint), tmp_path_factory.mktemp("bundle"), "tiny-test-model",
                        {"training": {"command": "tests"}}, ["a.jpg", "b.jpg"])


def test_a_bundle_holds_float16_weights_of_the_layers_that_run_and_nothing_else(bundle_dir, checkpoint):
    import safetensors.torch

    stored = safetensors.torch.load_file(str(bundle_dir / WEIGHTS_FILE))
    assert {tensor.dtype for tensor in stored.values()} == {STORED_DTYPE}
    trained = load_trained_net(checkpoint)
    kept = layers_run(trained.settings.input.feature_layer)
    backbone_layers = {int(key.split(".")[2]) for key in stored if key.startswith("backbone.layers.")}
    assert max(backbone_layers) < kept < 31  # block 4's cut: block 5 is not shipped
    heads = {key for key in trained.net.state_dict() if key.startswith("heads.")}
    assert heads <= set(stored)
    record = json.loads((bundle_dir / RECORD_FILE).read_text())
    assert record["name"] == "tiny-test-model" and record["temperature"] == trained.temperature
    assert record["training"] == {"command": "tests"}
    assert listed_test_files(bundle_dir) == ["a.jpg", "b.jpg"]


def test_a_bundle_predicts_as_its_checkpoint(bundle_dir, checkpoint):
    trained, bundled = load_trained_net(checkpoint), load_bundle(bundle_dir)
    assert bundled.name == "tiny-test-model" and bundled.dtype == torch.float32
    assert bundled.age_calibration == trained.age_calibration
    images = torch.randn(6, 3, trained.image_size, trained.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        (full, full_ages), (half, half_ages) = trained.predict(images), bundled.predict(images)
    assert torch.allclose(full, half, atol=2e-3)
    assert torch.allclose(full_ages.age, half_ages.age, atol=0.5)


def test_bad_bundles_are_one_line_errors(bundle_dir, tmp_path):
    with pytest.raises(UserError, match="not a bundled model"):
        load_bundle(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / RECORD_FILE).write_text((bundle_dir / RECORD_FILE).read_text())
    (broken / WEIGHTS_FILE).write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="cannot load the bundled model"):
        load_bundle(broken)
    (broken / RECORD_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(UserError, match="format 99"):
        load_bundle(broken)


def test_the_bundle_command_tests_the_bundle_on_the_runs_test_split(checkpoint, trained_run, tmp_path, capsys):
    data_dir = json.loads((trained_run / "run_config.json").read_text())["data_dir"]
    assert bundle_main(["--ckpt", str(checkpoint), "--output", str(tmp_path / "mine"), "--data_dir", data_dir,
                        "--num_workers", "0", "--name", "mine"]) == 0
    out = capsys.readouterr().out
    assert "mine on " in out and "float16 changed" in out
    record = json.loads((tmp_path / "mine" / RECORD_FILE).read_text())
    expected = split_names(trained_run / "split.json")["test"]
    assert (tmp_path / "mine" / TEST_FILES).read_text().split() == expected
    test = record["test"]
    assert test["metrics"]["faces"] == len(expected) and 0 <= test["metrics"]["accuracy"] <= 1
    assert test["float16_check"]["share_changed"] <= 0.5 and test["machine"]
    assert record["training"]["recipe"] == "default" and "lit_classifier_main.py" in record["training"]["command"]
    assert record["training"]["split"] == "grouped" and record["training"]["copy_labels"] == "drop"
    slices = {(row["slice"], row["value"]) for row in test["metrics"]["slices"]}
    assert ("gender", "male") in slices or ("gender", "female") in slices
    np.testing.assert_allclose(test["metrics"]["accuracy"], test["float16_check"]["accuracy_float16"])
    card = (tmp_path / "mine" / "metrics.md").read_text()
    assert f"{len(expected)} test faces" in card and "| age band: " in card and "float16" in card


def test_the_bundle_command_explains_a_missing_split(checkpoint, tmp_path, capsys):
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(Path(checkpoint).read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        bundle_main(["--ckpt", str(lonely), "--output", str(tmp_path / "b"), "--data_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "pass --split_file" in capsys.readouterr().err
