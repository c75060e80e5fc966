"""Calibration fitted on the validation split: group probabilities that mean what they say (temperature scaling),
and ages in years with intervals that hold the true age as often as they claim (conformal calibration).

Temperature scaling: make predicted probabilities mean what they say, without changing any prediction.

A trained classifier's probabilities are often systematically too sure or too unsure. Dividing its logits by one
number ``T`` fitted on held-out data (Guo et al., 2017, "On Calibration of Modern Neural Networks") fixes most of
that; the arg-max, so every predicted group and the accuracy, stays exactly the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Sequence

import torch

#: ``T`` is searched in this range. On a validation set the model gets all right, the likelihood keeps growing as
#: ``T`` shrinks; the bound keeps such a fit from turning every later prediction into a near certainty.
TEMPERATURE_RANGE = (0.25, 4.0)
#: Fewer validation items than this say too little about calibration: ``T`` stays 1 (uncalibrated).
MIN_CALIBRATION_ITEMS = 100


def _negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    return torch.nn.functional.cross_entropy(logits / temperature, targets).item()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, iterations: int = 60) -> float:
    """The ``T`` that minimises the mean negative log-likelihood of ``softmax(logits / T)`` on ``targets``.

    The log-likelihood is convex in ``1/T``, so a golden-section search on ``log T`` over
    :data:`TEMPERATURE_RANGE` finds the optimum (to ~1e-6 relative after 60 steps) deterministically. Returns 1.0
    (no change) for fewer than :data:`MIN_CALIBRATION_ITEMS` items.
    """
    if len(targets) < MIN_CALIBRATION_ITEMS:
        return 1.0
    logits, targets = logits.detach().double(), targets.detach().long()
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    inner_low, inner_high = high - ratio * (high - low), low + ratio * (high - low)
    loss_low = _negative_log_likelihood(logits, targets, math.exp(inner_low))
    loss_high = _negative_log_likelihood(logits, targets, math.exp(inner_high))
    for _ in range(iterations):
        if loss_low <= loss_high:
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - ratio * (high - low)
            loss_low = _negative_log_likelihood(logits, targets, math.exp(inner_low))
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + ratio * (high - low)
            loss_high = _negative_log_likelihood(logits, targets, math.exp(inner_high))
    return math.exp((low + high) / 2)


# ----------------------------------------------------------------------------------------------- ages in years

#: The central interval holds the true age this often, unless asked otherwise.
DEFAULT_INTERVAL_LEVEL = 0.8
#: How a distribution over years becomes one age; the one with the lower validation MAE is kept.
POINT_ESTIMATES = ("median", "mean")


def year_quantiles(year_probs: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Quantiles ``N x len(levels)`` (in years) of distributions over the years 0..K-1 (``N x K``).

    Year ``k``'s probability is read as spread evenly over ``[k - 0.5, k + 0.5)``, so quantiles move smoothly
    between whole years (a face labelled 30 is somewhere between 30 and 31 years old; the labels round down, the
    bins centre on them). Clipped to ``[0, K - 1]``.
    """
    probs = year_probs.double()
    cdf = probs.cumsum(dim=1).contiguous()
    last = probs.shape[1] - 1
    columns = []
    for level in levels:
        target = torch.full((len(probs), 1), float(level), dtype=torch.float64)
        year = torch.searchsorted(cdf, target).clamp(max=last)  # the first year whose CDF reaches the level
        below = torch.where(year > 0, cdf.gather(1, (year - 1).clamp(min=0)), torch.zeros_like(target))
        mass = probs.gather(1, year).clamp(min=1e-12)
        columns.append((year - 0.5 + (target - below) / mass).clamp(0, last))
    return torch.cat(columns, dim=1)


def point_estimate(year_probs: torch.Tensor, point: str) -> torch.Tensor:
    """``median`` or ``mean`` age (``N``) of distributions over years (``N x K``)."""
    if point == "median":
        return year_quantiles(year_probs, [0.5])[:, 0]
    if point == "mean":
        years = torch.arange(year_probs.shape[1], dtype=torch.float64)
        return year_probs.double() @ years / year_probs.double().sum(dim=1)
    raise ValueError(f"unknown point estimate {point!r}; choose one of {', '.join(POINT_ESTIMATES)}")


@dataclass(frozen=True)
class AgeEstimate:
    """Ages in years (``N``) and, when the interval is calibrated, its bounds (else ``None``)."""

    age: torch.Tensor
    low: Optional[torch.Tensor]
    high: Optional[torch.Tensor]


@dataclass(frozen=True)
class AgeCalibration:
    """How a per-year distribution becomes an age and an honest interval, fitted on the validation split.

    The interval is the distribution's central ``level`` interval ``[q_lo, q_hi]`` widened by ``scale`` times its
    width on both sides (``scale < 0`` narrows it): split-conformal calibration with a width-normalised score
    (Romano et al. 2019, "Conformalized Quantile Regression"), so on new faces from the same source it holds the
    true age at least ``level`` of the time, and children, whose distributions are narrow, keep narrow intervals.
    ``scale`` is ``None`` when validation had too few faces to fit it: then no interval is given.
    """

    point: str
    level: float
    scale: Optional[float]

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping) -> "AgeCalibration":
        return cls(**record)

    def estimate(self, year_probs: torch.Tensor) -> AgeEstimate:
        """The age (and interval) of each distribution over years (``N x K``)."""
        age = point_estimate(year_probs, self.point)
        if self.scale is None:
            return AgeEstimate(age, None, None)
        low, high = _central_interval(year_probs, self.level)
        margin = self.scale * (high - low).clamp(min=1.0)
        last = year_probs.shape[1] - 1
        # never an interval that misses its own estimate (only a strongly negative scale could do that)
        low = torch.minimum((low - margin).clamp(0, last), age)
        high = torch.maximum((high + margin).clamp(0, last), age)
        return AgeEstimate(age, low, high)


def uncalibrated_ages(level: float = DEFAULT_INTERVAL_LEVEL) -> AgeCalibration:
    """The median age and no interval: for checkpoints that hold no fitted age calibration."""
    return AgeCalibration(point="median", level=level, scale=None)


def _central_interval(year_probs: torch.Tensor, level: float):
    bounds = year_quantiles(year_probs, [(1 - level) / 2, (1 + level) / 2])
    return bounds[:, 0], bounds[:, 1]


def fit_age_calibration(year_probs: torch.Tensor, ages: torch.Tensor,
                        level: float = DEFAULT_INTERVAL_LEVEL) -> AgeCalibration:
    """The point estimate with the lower mean absolute error on ``ages`` and the conformal ``scale`` (see
    :class:`AgeCalibration`). Fewer than :data:`MIN_CALIBRATION_ITEMS` faces give the median and no interval."""
    if len(ages) < MIN_CALIBRATION_ITEMS:
        return uncalibrated_ages(level)
    truth = ages.double()
    errors = {point: (point_estimate(year_probs, point) - truth).abs().mean().item() for point in POINT_ESTIMATES}
    point = min(POINT_ESTIMATES, key=errors.get)
    low, high = _central_interval(year_probs, level)
    scores = torch.maximum(low - truth, truth - high) / (high - low).clamp(min=1.0)
    count = len(scores)
    rank = min(count, math.ceil((count + 1) * level))  # the conformal quantile's rank among the scores
    return AgeCalibration(point=point, level=level, scale=float(scores.sort().values[rank - 1]))
