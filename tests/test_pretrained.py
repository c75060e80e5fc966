"""The bundled model that ships in the package: small, complete, the default everywhere, and true to its card."""

from __future__ import annotations

import json

import pytest
from helpers.paths import REAL_ARCHIVE, REPO
from helpers.run_if import real_data

from project.models.bundle import (
    PRETRAINED_DIR,
    RECORD_FILE,
    WEIGHTS_FILE,
    listed_test_files,
    load_bundle,
    read_record,
)

#: the issue's limit on everything the package ships for the model
MAX_BUNDLE_BYTES = 25 * 1024 * 1024


def test_the_bundled_model_is_small_and_says_what_it_is():
    files = [path for path in PRETRAINED_DIR.iterdir() if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= MAX_BUNDLE_BYTES
    record = read_record(PRETRAINED_DIR)
    assert record["name"] and "lit_classifier_main.py" in record["training"]["command"]
    assert record["training"]["seed"] == 42 and record["weights"]["dtype"] == "float16"
    assert record["training"]["split"] == "grouped"  # trained and tested with copies of one photo on one side
    test = record["test"]
    assert test["metrics"]["faces"] == len(listed_test_files(PRETRAINED_DIR)) > 2000
    check = test["float16_check"]  # the bounds for storing the weights in float16
    assert check["share_changed"] <= 0.005
    assert abs(check["accuracy_float16"] - check["accuracy_float32"]) < 0.001
    card = (REPO / "MODEL_CARD.md").read_text()
    assert record["name"] in card and f"{test['metrics']['accuracy']:.1%}" in card


def test_the_bundled_model_is_the_default_of_predict_serve_export_and_the_api():
    from project.export import get_args_parser as export_args
    from project.inference.predictor import AgeGroupPredictor
    from project.predict import get_args_parser as predict_args
    from project.serve.server import get_args_parser as serve_args
    from project.serve.server import model_info

    assert predict_args().parse_args(["photo.jpg"]).ckpt is None  # None: the bundled model
    assert serve_args().parse_args([]).ckpt == str(PRETRAINED_DIR)
    assert export_args().parse_args(["--output", "m.onnx"]).ckpt == str(PRETRAINED_DIR)
    name = read_record(PRETRAINED_DIR)["name"]
    assert model_info(PRETRAINED_DIR)["name"] == name
    assert AgeGroupPredictor.pretrained().model_name == name == load_bundle().name


@pytest.mark.slow
def test_the_bundled_model_exports_without_a_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from project.export import main as export

    assert export(["--output", str(tmp_path / "bundled.onnx")]) == 0
    from project.inference.onnx_backend import OnnxNet

    assert OnnxNet(tmp_path / "bundled.onnx").name == read_record(PRETRAINED_DIR)["name"]


@real_data
@pytest.mark.slow
def test_the_bundled_model_retests_to_its_recorded_accuracy_and_mae(tmp_path):
    """Its shipped test file names, read from the real UTKFace archive, give the figures in its model.json (the
    float32 arithmetic of another CPU may flip a face or two)."""
    from project.data.datasets import files_dataset
    from project.inference.evaluation import evaluate

    recorded = json.loads((PRETRAINED_DIR / RECORD_FILE).read_text())["test"]["metrics"]
    trained = load_bundle()
    dataset = files_dataset(REAL_ARCHIVE, listed_test_files(), trained.image_size, tmp_path / "cache")
    metrics = evaluate(trained, dataset, batch_size=64, description="").metrics()
    assert metrics["faces"] == recorded["faces"]
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=2.5 / recorded["faces"])
    assert metrics["ages"]["mae"] == pytest.approx(recorded["ages"]["mae"], abs=0.01)
    assert metrics["ages"]["interval_coverage"] == pytest.approx(recorded["ages"]["interval_coverage"], abs=0.002)


def test_the_weights_file_is_safetensors():
    """A safetensors file is an 8-byte header length, a JSON header, and raw tensor bytes: nothing to unpickle."""
    raw = (PRETRAINED_DIR / WEIGHTS_FILE).read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["name"] == read_record(PRETRAINED_DIR)["name"]
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"F16"}
