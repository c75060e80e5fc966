"""Prediction results as a plain-text table, a CSV file or a JSON file (error rows included)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from project.common.fileutils import atomic_path
from project.core.age_groups import GROUP_LABELS
from project.inference.predictor import Prediction

#: ``--output`` file types
OUTPUT_SUFFIXES = (".csv", ".json")
#: One row per prediction: the face box as four columns, one probability column per group.
CSV_COLUMNS = (["source", "face_x", "face_y", "face_w", "face_h", "face_score", "group", "group_index", "confidence"]
               + [f"p_{label}" for label in GROUP_LABELS] + ["age", "age_low", "age_high", "error"])


def csv_row(prediction: Prediction) -> Dict:
    """One CSV row: the face box as four columns, one probability column per group (6 decimals)."""
    box = prediction.face_box or (None,) * 4
    confidence = None if prediction.confidence is None else round(prediction.confidence, 6)
    low, high = prediction.age_interval or (None, None)
    score = None if prediction.face_score is None else round(prediction.face_score, 3)
    row = {"source": prediction.source, "face_x": box[0], "face_y": box[1], "face_w": box[2], "face_h": box[3],
           "face_score": score,
           "group": prediction.group, "group_index": prediction.group_index, "confidence": confidence,
           "age": _years(prediction.age), "age_low": _years(low), "age_high": _years(high), "error": prediction.error}
    row.update({f"p_{label}": round(p, 6) for label, p in prediction.probabilities.items()})
    return {key: "" if value is None else value for key, value in row.items()}


def _years(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def age_text(prediction: Prediction) -> str:
    """``31 y (24-39)``, ``31 y`` without an interval, ``-`` for a model without ages."""
    if prediction.age is None:
        return "-"
    text = f"{prediction.age:.0f} y"
    if prediction.age_interval:
        text += f" ({prediction.age_interval[0]:.0f}-{prediction.age_interval[1]:.0f})"
    return text


def write_output(predictions: Sequence[Prediction], path: Path) -> None:
    """Write all predictions as CSV or JSON (by ``path``'s suffix), error rows included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".json":
            tmp.write_text(json.dumps([p.to_dict() for p in predictions], indent=1))
            return
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(csv_row(p) for p in predictions)


def format_table(predictions: Sequence[Prediction], max_name: int = 60) -> str:
    """A plain-text table: file, (face), predicted group, (age and interval), probability of each group."""
    with_faces = any(p.face_box for p in predictions)
    names = [p.source if len(p.source) <= max_name else "..." + p.source[-(max_name - 3):] for p in predictions]
    name_width = max([len("file")] + [len(n) for n in names])
    header = f"{'file':<{name_width}}  " + (f"{'face (x,y,w,h)':<19}  " if with_faces else "")
    with_ages = any(p.age is not None for p in predictions)
    header += f"{'group':<7}  " + (f"{'age (interval)':<15}  " if with_ages else "")
    header += "  ".join(f"{label:>7}" for label in GROUP_LABELS)
    lines = [header, "-" * len(header)]
    for name, prediction in zip(names, predictions):
        line = f"{name:<{name_width}}  "
        if with_faces:
            line += f"{','.join(map(str, prediction.face_box)) if prediction.face_box else '-':<19}  "
        if prediction.ok:
            probabilities = "  ".join(f"{prediction.probabilities[label]:>7.3f}" for label in GROUP_LABELS)
            line += f"{prediction.group:<7}  " + (f"{age_text(prediction):<15}  " if with_ages else "")
            line += probabilities
        else:
            line += f"error: {prediction.error}"
        lines.append(line)
    return "\n".join(lines)
