"""Temperature scaling: the fit itself, and a run that stores the validation temperature in its checkpoints."""

import json

import pytest
import torch
from helpers.config import run_dir, settings_for
from torchmetrics.functional.classification import multiclass_calibration_error

from project import calibration
from project.calibration import fit_temperature
from project.lit_classifier_main import LitClassifier
from project.training.run import train


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


def test_a_fit_stores_the_validation_temperature_in_its_checkpoints(flags, runs, monkeypatch):
    monkeypatch.setattr(calibration, "MIN_CALIBRATION_ITEMS", 1)  # the synthetic set has 5 validation images
    metrics = train(settings_for(flags + ["--max_epochs", "2"]))
    best = torch.load(metrics["checkpoint"], weights_only=True)
    assert best["temperature"] != 1.0 and best["hyper_parameters"]["objective"]["calibrate"]
    assert metrics["temperature"] == pytest.approx(best["temperature"])
    assert json.loads((run_dir(runs) / "test_metrics.json").read_text())["temperature"] == metrics["temperature"]
    assert 0.0 <= metrics["test_calibration_error"] <= 1.0
    assert LitClassifier.load_from_checkpoint(metrics["checkpoint"]).temperature == pytest.approx(best["temperature"])
