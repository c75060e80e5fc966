"""Where the model is wrong: errors in years, and accuracy and errors per gender, ethnicity and age band.

Everything here works on the test pass's per-face records (:class:`FaceResults`), as plain numbers, so the same
functions serve the test run, the benchmark and the tests.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from project.core.age_groups import AGE_BAND_LABELS, GROUP_LABELS, NUM_CLASSES, age_band
from project.core.demographics import ETHNICITY_LABELS, GENDER_LABELS

#: ``|estimate - age| <= CS_YEARS`` counts towards CS(5), the share of faces within five years.
CS_YEARS = 5
SLICE_COLUMNS = ("slice", "value", "count", "accuracy", "balanced_accuracy", "mae", "mean_signed_error",
                 "interval_coverage")


@dataclass
class FaceResults:
    """One entry per test face. Ages, bounds are NaN where the model gives none (no per-year output, or no
    calibrated interval)."""

    age: np.ndarray
    group: np.ndarray
    predicted_group: np.ndarray
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    gender: np.ndarray
    ethnicity: np.ndarray

    def subset(self, mask: np.ndarray) -> "FaceResults":
        return FaceResults(**{name: values[mask] for name, values in vars(self).items()})

    @property
    def has_ages(self) -> bool:
        return bool(len(self.estimate)) and not np.isnan(self.estimate).all()

    @property
    def has_intervals(self) -> bool:
        return bool(len(self.low)) and not np.isnan(self.low).all()


def _mean(values: np.ndarray) -> Optional[float]:
    return float(values.mean()) if len(values) else None


def balanced_accuracy(records: FaceResults) -> Optional[float]:
    """Mean recall over the age groups present in ``records``."""
    recalls = [float((records.predicted_group[records.group == g] == g).mean())
               for g in range(NUM_CLASSES) if (records.group == g).any()]
    return float(np.mean(recalls)) if recalls else None


def slice_metrics(records: FaceResults) -> Dict[str, Optional[float]]:
    """Count, accuracy, balanced accuracy, MAE, mean signed error (positive: predicted too old), coverage."""
    error = records.estimate - records.age
    covered = (records.low <= records.age) & (records.age <= records.high)
    return {
        "count": int(len(records.age)),
        "accuracy": _mean((records.predicted_group == records.group).astype(float)),
        "balanced_accuracy": balanced_accuracy(records),
        "mae": _mean(np.abs(error)) if records.has_ages else None,
        "mean_signed_error": _mean(error) if records.has_ages else None,
        "interval_coverage": _mean(covered.astype(float)) if records.has_intervals else None,
    }


def age_metrics(records: FaceResults) -> Dict:
    """Test metrics in years (empty for a model without ages)."""
    if not records.has_ages:
        return {}
    error = records.estimate - records.age
    metrics = {
        "mae": float(np.abs(error).mean()),
        "median_absolute_error": float(np.median(np.abs(error))),
        "cs5": float((np.abs(error) <= CS_YEARS).mean()),
        "mean_signed_error": float(error.mean()),
        "mae_by_group": {label: _mean(np.abs(error[records.group == g]))
                         for g, label in enumerate(GROUP_LABELS)},
    }
    if records.has_intervals:
        metrics["interval_coverage"] = float(((records.low <= records.age) & (records.age <= records.high)).mean())
        metrics["interval_width"] = float((records.high - records.low).mean())
    return metrics


def errors_by_age(records: FaceResults) -> Dict[str, Dict[str, float]]:
    """Per year of true age: count, MAE and mean signed error (for the error-by-age figure)."""
    if not records.has_ages:
        return {}
    table = {}
    for age in np.unique(records.age):
        error = records.estimate[records.age == age] - age
        table[str(int(age))] = {"count": int(len(error)), "mae": float(np.abs(error).mean()),
                                "mean_signed_error": float(error.mean())}
    return table


def slice_rows(records: FaceResults) -> List[Dict]:
    """:func:`slice_metrics` for every gender, every ethnicity and every age band (empty slices left out)."""
    bands = np.array([age_band(int(age)) for age in records.age], dtype=np.int64)
    rows = []
    for name, codes, labels in (("gender", records.gender, GENDER_LABELS),
                                ("ethnicity", records.ethnicity, ETHNICITY_LABELS),
                                ("age band", bands, AGE_BAND_LABELS)):
        for code, label in enumerate(labels):
            mask = codes == code
            if mask.any():
                rows.append({"slice": name, "value": label, **slice_metrics(records.subset(mask))})
    return rows


def write_slices_csv(rows: Sequence[Dict], path: Path) -> Path:
    """The slice table as CSV (empty cells where a metric does not apply)."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SLICE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row[key] is None or (isinstance(row[key], float) and math.isnan(row[key]))
                             else row[key] for key in SLICE_COLUMNS})
    return path
