"""Temperature scaling: the fit itself, and a run that stores the validation temperature in its checkpoints."""

import json

import pytest
import torch
from helpers.config import run_dir, settings_for
from torchmetrics.functional.classification import multiclass_calibration_error

from project.core import calibration
from project.core.calibration import (
    AgeCalibration,
    fit_age_calibration,
    fit_temperature,
    point_estimate,
    uncalibrated_ages,
    year_quantiles,
)
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


def _age_distributions(count: int, spread: float, noise: float, seed: int = 0):
    """True ages, and per-year distributions centred ``noise``-far (s.d.) from them with s.d. ``spread``."""
    generator = torch.Generator().manual_seed(seed)
    ages = torch.randint(0, 100, (count,), generator=generator).double()
    centres = ages + noise * torch.randn(count, generator=generator, dtype=torch.float64)
    years = torch.arange(125, dtype=torch.float64)
    probs = torch.exp(-0.5 * ((years[None] - centres[:, None]) / spread) ** 2)
    return probs / probs.sum(dim=1, keepdim=True), ages


def test_quantiles_spread_each_year_over_its_bin():
    probs = torch.zeros(2, 125)
    probs[0, 30] = 1.0
    probs[1, 10] = probs[1, 20] = 0.5
    quantiles = year_quantiles(probs, [0.1, 0.5, 0.9]).flatten().tolist()
    assert quantiles == pytest.approx([29.6, 30.0, 30.4, 9.7, 10.5, 20.3])
    assert point_estimate(probs, "mean").tolist() == [30.0, 15.0]
    assert point_estimate(probs, "median").tolist() == pytest.approx([30.0, 10.5])


@pytest.mark.parametrize("spread, noise", [(5.0, 7.0), (8.0, 4.0)], ids=["too sure", "too unsure"])
def test_calibrated_intervals_hold_the_true_age_as_often_as_they_claim(spread, noise):
    probs, ages = _age_distributions(6000, spread, noise)
    calibration = fit_age_calibration(probs[:3000], ages[:3000], level=0.8)
    assert (calibration.scale > 0) == (spread < noise * 1.0)  # widened when too sure, narrowed when too unsure
    estimate = calibration.estimate(probs[3000:])
    covered = ((estimate.low <= ages[3000:]) & (ages[3000:] <= estimate.high)).double().mean().item()
    assert covered == pytest.approx(0.8, abs=0.025)
    assert (estimate.low <= estimate.age).all() and (estimate.age <= estimate.high).all()


def test_the_point_estimate_with_the_lower_validation_error_is_kept():
    probs = torch.zeros(200, 125)
    probs[:, 20], probs[:, 60] = 0.6, 0.4  # median 20.3, mean 36
    assert fit_age_calibration(probs, torch.full((200,), 21.0)).point == "median"
    assert fit_age_calibration(probs, torch.full((200,), 35.0)).point == "mean"
    assert fit_age_calibration(probs[:50], torch.full((50,), 35.0)) == uncalibrated_ages()  # too few: no interval
    assert uncalibrated_ages().estimate(probs[:2]).low is None
    assert AgeCalibration.from_dict(uncalibrated_ages().to_dict()) == uncalibrated_ages()
