"""Scanning a folder for usable UTKFace images: names, ages, cheap file checks, and what was skipped and why.

UTKFace file names look like ``{age}_{gender}_{race}_{datetime}.jpg.chip.jpg``. The age is needed, gender and race
are kept when present (for the per-slice error report); real copies also hold names without the race field (still
valid), names with stray spaces, macOS ``._*`` files, notes and broken files. Everything that cannot be used is
skipped with a reason and reported once, up front.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from project.core.age_groups import MAX_AGE, age_to_group
from project.core.transforms import IMAGE_SUFFIXES

#: Written into an extracted archive's folder by ``project.data.archives``: member names that occurred more than
#: once (the first copy was kept), reported here with the other skipped files.
ARCHIVE_DUPLICATES_FILE = ".archive_duplicates.txt"
#: Reason given for files whose pixel data cannot be decoded (found by the feature-cache build or the decode check).
UNDECODABLE_REASON = "cannot be decoded"


@dataclass(frozen=True)
class FaceItem:
    """One usable image: its path relative to the dataset root, its age and age group, and (when known) the
    gender and ethnicity codes of ``project.core.demographics``."""

    relpath: str
    age: int
    group: int
    gender: Optional[int] = None
    ethnicity: Optional[int] = None


def parse_name(file_name: str) -> Optional[Tuple[int, Optional[int], Optional[int]]]:
    """``(age, gender, ethnicity)`` from a UTKFace file name, or ``None`` if the name carries no age.

    ``"25_0_1_20170116174525125.jpg.chip.jpg"`` -> ``(25, 0, 1)``; names without the race field
    (``"39_1_2017...jpg"``, three real files) give ``(39, 1, None)``; stray spaces (``" 25 _0_1_...jpg"``) are
    accepted; a field that is not a known code is unknown (``None``).
    """
    stem = file_name.strip().split(".", 1)[0]
    fields = [part.strip() for part in stem.split("_")]
    if len(fields) < 2 or not fields[0].isdigit():
        return None
    gender = int(fields[1]) if fields[1] in ("0", "1") else None
    race = fields[2] if len(fields) >= 4 else ""  # with three fields the third is the date
    ethnicity = int(race) if race in ("0", "1", "2", "3", "4") else None
    return int(fields[0]), gender, ethnicity


@dataclass
class ScanResult:
    """The usable images (sorted by path) and the skipped files with the reason for each."""

    root: Path
    items: List[FaceItem]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    #: every file looked at, usable or not (archive duplicates included)
    files_seen: int = 0

    def skipped_summary(self, limit: int = 3) -> str:
        """One line: how many files were skipped, and the first few with their reason."""
        shown = "; ".join(f"{name} ({reason})" for name, reason in self.skipped[:limit])
        more = f"; and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return f"skipped {len(self.skipped)} of {self.files_seen} files: {shown}{more}"


def check_image_file(path: Path) -> Optional[str]:
    """A cheap check (header and end marker, no decoding) of one image file; the reason it is broken, or None.

    A JPEG cut short loses its end-of-image marker, so truncated downloads are caught without decoding 23k files.
    Other formats than JPEG and PNG pass here; the decode check before training catches their broken files.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return "unreadable or dangling link"
    if size == 0:
        return "empty file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(max(0, size - 12))
            tail = handle.read()
    except OSError:
        return "unreadable file"
    if head.startswith(b"\xff\xd8\xff"):
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if path.name.strip().lower().endswith((".jpg", ".jpeg", ".png")):
        return "not a JPEG or PNG image"
    return None


def scan_utkface(root: Path, check_images: bool = True) -> ScanResult:
    """Walk ``root`` for UTKFace images, parse their ages and skip (with a reason) what cannot be used."""
    items: List[FaceItem] = []
    skipped: List[Tuple[str, str]] = []
    seen: Dict[str, str] = {}
    duplicates_file = root / ARCHIVE_DUPLICATES_FILE
    if duplicates_file.is_file():
        skipped += [(name, "duplicate name in the archive (first copy kept)")
                    for name in duplicates_file.read_text().splitlines() if name]
    for path in sorted(p for p in root.rglob("*") if not p.is_dir()):
        if path == duplicates_file:
            continue
        relpath = path.relative_to(root).as_posix()
        name = path.name
        if any(part.startswith(".") and part not in (".", "..") for part in Path(relpath).parts[:-1]):
            continue  # hidden folders such as .ipynb_checkpoints or our own .partial extraction dirs
        reason = _unusable_name(name)
        if reason is None and name.strip() in seen:
            reason = f"duplicate of {seen[name.strip()]}"
        if reason is None and check_images:
            reason = check_image_file(path)
        if reason is not None:
            skipped.append((relpath, reason))
            continue
        seen[name.strip()] = relpath
        age, gender, ethnicity = parse_name(name)
        items.append(FaceItem(relpath, age, age_to_group(age), gender, ethnicity))
    return ScanResult(root, items, skipped, files_seen=len(items) + len(skipped))


def _unusable_name(name: str) -> Optional[str]:
    """Why a file name cannot be a UTKFace image, or None."""
    if name.startswith("._"):
        return "macOS metadata file"
    if not name.strip().lower().endswith(IMAGE_SUFFIXES):
        return "not an image file name"
    fields = parse_name(name)
    if fields is None:
        return "name does not start with {age}_"
    return age_problem(fields[0])


def age_problem(age: int) -> Optional[str]:
    """Why ``age`` (whole years) cannot be used, or None."""
    if age < 0:
        return f"age {age} is negative"
    if age_to_group(age) is None:
        return f"age {age} outside 0-{MAX_AGE}"
    return None


def files_digest(root: Path, relpaths: Sequence[str]) -> str:
    """A hash of a list of images: their names and sizes, in order."""
    files = hashlib.sha256()
    for relpath in relpaths:
        files.update(f"{relpath}\0{(Path(root) / relpath).stat().st_size}\n".encode())
    return files.hexdigest()
