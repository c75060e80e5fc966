"""Your own labelled faces: a CSV or TSV labels table instead of UTKFace's file names.

    path,age,gender,ethnicity          (gender and ethnicity optional; any column order; a header is required)
    alice/2019.jpg,31,female,Asian
    bob.png,58,m,

Paths are relative to the table's folder (absolute paths work too). Rows that cannot be used - the file is missing
or broken, the age is not a number, negative or above 124, the path came before, a gender or ethnicity that is not
recognised - are skipped and reported like unusable UTKFace files; a file that is not a labels table is a one-line
error. Ages are whole years: a fractional age counts its completed years (2.5 -> 2).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from project.common.errors import UserError
from project.core.age_groups import age_to_group
from project.core.demographics import parse_ethnicity, parse_gender
from project.core.transforms import IMAGE_SUFFIXES
from project.data.scan import FaceItem, ScanResult, age_problem, check_image_file

LABELS_SUFFIXES = (".csv", ".tsv")
REQUIRED_COLUMNS = ("path", "age")


def is_labels_table(path: Path) -> bool:
    """A file named like a labels table (``.csv`` or ``.tsv``)."""
    return path.is_file() and path.name.lower().endswith(LABELS_SUFFIXES)


def _read_rows(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    """The header (lower-cased) and the rows of a CSV/TSV table, or a one-line error if it is not one."""
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip().lower() for name in next(reader, [])]
            rows = [dict(zip(header, values)) for values in reader if any(value.strip() for value in values)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read labels table {path} ({err}); pass a UTF-8 CSV/TSV file") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise UserError(f"{path} is not a labels table: its header needs the columns path and age (optional gender, "
                        f"ethnicity); missing {', '.join(missing)}")
    return header, rows


def _parse_age(text: str) -> Tuple[Optional[int], Optional[str]]:
    try:
        value = float(text.strip())
    except ValueError:
        return None, f"age {text.strip()!r} is not a number"
    if not math.isfinite(value):
        return None, f"age {text.strip()!r} is not a number"
    age = math.floor(value)
    return age, age_problem(age)


def _row_item(root: Path, row: Dict[str, str]) -> Tuple[Optional[FaceItem], Optional[str]]:
    """The item of one row, or why the row cannot be used."""
    relpath = (row.get("path") or "").strip()
    if not relpath:
        return None, "no path"
    if not relpath.lower().endswith(IMAGE_SUFFIXES):
        return None, "not an image file name"
    age, problem = _parse_age(row.get("age") or "")
    if problem:
        return None, problem
    try:
        gender = parse_gender(row.get("gender") or "")
        ethnicity = parse_ethnicity(row.get("ethnicity") or "")
    except ValueError as err:
        return None, str(err)
    if not (root / relpath).is_file():
        return None, "file not found"
    problem = check_image_file(root / relpath)
    if problem:
        return None, problem
    return FaceItem(relpath, age, age_to_group(age), gender, ethnicity), None


def scan_labels_table(path: Path) -> ScanResult:
    """The usable rows of the labels table at ``path`` (in table order) and the skipped ones with a reason."""
    path = Path(path)
    root = path.parent
    _, rows = _read_rows(path)
    items: List[FaceItem] = []
    skipped: List[Tuple[str, str]] = []
    first_row: Dict[str, int] = {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        item, problem = _row_item(root, row)
        name = f"{path.name}:{number}"
        if item is not None and item.relpath in first_row:
            problem = f"duplicate of row {first_row[item.relpath]}"
        if problem:
            skipped.append((f"{name} {(row.get('path') or '').strip()}".strip(), problem))
            continue
        first_row[item.relpath] = number
        items.append(item)
    return ScanResult(root, items, skipped, files_seen=len(rows))
