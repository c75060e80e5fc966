"""The error report: metrics in years and per slice, on a handful of faces whose answers are known."""

import csv

import numpy as np
import pytest

from project.core.age_report import FaceResults, age_metrics, errors_by_age, slice_rows, write_slices_csv

NAN = float("nan")


def records(**columns):
    return FaceResults(**{name: np.asarray(values, dtype=np.float64) for name, values in columns.items()})


#: six faces: ages 1, 10, 30, 30, 60, 85; the estimates are 3, 9, 36, 27, 60, 70 (errors +2, -1, +6, -3, 0, -15)
FACES = records(age=[1, 10, 30, 30, 60, 85], group=[0, 0, 1, 1, 2, 3], predicted_group=[0, 0, 1, 0, 2, 2],
                estimate=[3, 9, 36, 27, 60, 70], low=[0, 5, 30, 31, 50, 60], high=[5, 15, 40, 35, 70, 80],
                gender=[0, 1, 0, 1, 2, 0], ethnicity=[0, 0, 2, 5, 1, 0])


def test_metrics_in_years():
    metrics = age_metrics(FACES)
    assert metrics["mae"] == pytest.approx(27 / 6)
    assert metrics["median_absolute_error"] == pytest.approx(2.5)
    assert metrics["cs5"] == pytest.approx(4 / 6)  # within 5 years: 2, 1, 3, 0
    assert metrics["mean_signed_error"] == pytest.approx(-11 / 6)
    assert metrics["interval_coverage"] == pytest.approx(4 / 6)  # the 30 at 31-35 and the 85 at 60-80 miss
    assert metrics["interval_width"] == pytest.approx((5 + 10 + 10 + 4 + 20 + 20) / 6)
    assert metrics["mae_by_group"] == {"0-24": 1.5, "25-49": 4.5, "50-74": 0.0, "75-99": 15.0, "100-124": None}
    assert errors_by_age(FACES)["30"] == {"count": 2, "mae": 4.5, "mean_signed_error": 1.5}


def test_slices_per_gender_ethnicity_and_age_band():
    rows = {(row["slice"], row["value"]): row for row in slice_rows(FACES)}
    female = rows[("gender", "female")]
    assert female["count"] == 2 and female["accuracy"] == 0.5 and female["mae"] == 2.0
    assert female["balanced_accuracy"] == pytest.approx(0.5)  # groups 0 (right) and 1 (wrong)
    assert rows[("gender", "unknown")]["count"] == 1 and rows[("ethnicity", "unknown")]["count"] == 1
    assert rows[("ethnicity", "White")]["mean_signed_error"] == pytest.approx((2 - 1 - 15) / 3)
    assert rows[("age band", "80+")] == {"slice": "age band", "value": "80+", "count": 1, "accuracy": 0.0,
                                         "balanced_accuracy": 0.0, "mae": 15.0, "mean_signed_error": -15.0,
                                         "interval_coverage": 0.0}
    assert ("age band", "13-19") not in rows  # empty slices are left out
    assert [row["value"] for row in slice_rows(FACES) if row["slice"] == "age band"] == [
        "0-2", "3-12", "25-34", "50-64", "80+"]


def test_a_model_without_ages_reports_groups_only(tmp_path):
    groups_only = records(age=[1, 30], group=[0, 1], predicted_group=[0, 0], estimate=[NAN, NAN], low=[NAN, NAN],
                          high=[NAN, NAN], gender=[0, 1], ethnicity=[0, 0])
    assert age_metrics(groups_only) == {} and errors_by_age(groups_only) == {}
    rows = slice_rows(groups_only)
    assert rows[0]["accuracy"] == 1.0 and rows[0]["mae"] is None and rows[0]["interval_coverage"] is None
    path = write_slices_csv(rows, tmp_path / "slices.csv")
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert written[0]["slice"] == "gender" and written[0]["mae"] == "" and written[0]["count"] == "1"
