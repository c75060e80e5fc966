"""Temperature scaling: fitted on validation, stored in the checkpoint, applied to test and prediction only."""

import json

import pytest
import torch

from torchmetrics.functional.classification import multiclass_calibration_error

from project import calibration
from project.calibration import fit_temperature
from project.cli import main
from project.lit_classifier_main import LitClassifier
from project.recipes import DEFAULT


def _sampled(temperature: float, count: int = 20_000):
    """Logits and labels drawn from ``softmax(logits / temperature)``: ``temperature`` is the right answer."""
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(count, 5, generator=generator)
    targets = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, targets


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(true_temperature):
    logits, targets = _sampled(true_temperature)
    assert fit_temperature(logits, targets) == pytest.approx(true_temperature, rel=0.05)


def test_too_little_or_too_easy_validation_data_cannot_make_the_model_overconfident():
    logits, targets = _sampled(1.0)
    few = calibration.MIN_CALIBRATION_ITEMS - 1
    assert fit_temperature(logits[:few], targets[:few]) == 1.0  # too few to say anything: no change
    all_right = logits.argmax(dim=1)  # the likelihood grows without end as T shrinks
    assert fit_temperature(logits, all_right) == pytest.approx(calibration.TEMPERATURE_RANGE[0], rel=1e-3)


def test_the_reported_calibration_error_tells_honest_from_overconfident_probabilities():
    logits, targets = _sampled(1.0)
    def calibration_error(probabilities):  # what test_calibration_error reports
        return multiclass_calibration_error(probabilities, targets, num_classes=5, n_bins=15).item()

    assert calibration_error(torch.softmax(logits, dim=1)) < 0.02
    assert calibration_error(torch.softmax(4 * logits, dim=1)) > 0.1


def test_temperature_scales_test_and_prediction_but_not_validation():
    torch.manual_seed(0)
    model = LitClassifier(image_size=32, backbone_weights="none", **DEFAULT.model_kwargs()).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        raw = model.logits(images)
        model.temperature = 0.5
        calibrated = model(images)
        assert torch.allclose(calibrated, raw / 0.5)
        assert torch.allclose(model.predict_step(images, 0), torch.softmax(raw / 0.5, dim=1))
    assert torch.equal(calibrated.argmax(dim=1), raw.argmax(dim=1))  # never changes a prediction


def test_a_fit_stores_the_validation_temperature_in_its_checkpoints(cli_args, tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "MIN_CALIBRATION_ITEMS", 1)  # the synthetic set has 5 validation images
    assert main(cli_args["base"] + ["--max_epochs", "2"]) == 0
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    metrics = json.loads((run / "test_metrics.json").read_text())
    best = torch.load(metrics["checkpoint"], weights_only=True)
    assert best["temperature"] != 1.0 and best["hyper_parameters"]["calibrate"]
    assert metrics["temperature"] == pytest.approx(best["temperature"])
    assert 0.0 <= metrics["test_calibration_error"] <= 1.0
    assert LitClassifier.load_from_checkpoint(metrics["checkpoint"]).temperature == pytest.approx(best["temperature"])


def test_checkpoints_without_a_temperature_load_uncalibrated(tmp_path):
    model = LitClassifier(image_size=32, backbone_weights="none")
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.5.0"}, path)
    assert LitClassifier.load_from_checkpoint(path).temperature == 1.0
