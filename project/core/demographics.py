"""Gender and ethnicity as UTKFace's file names code them: the labels of the per-slice error report.

UTKFace names are ``{age}_{gender}_{race}_{datetime}``: gender 0 male, 1 female; race 0 White, 1 Black, 2 Asian,
3 Indian, 4 Others. A face whose name (or labels-table row) does not say is ``unknown``: batches carry the code
:data:`UNKNOWN_GENDER` / :data:`UNKNOWN_ETHNICITY` for it, one past the known ones.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

GENDERS: Tuple[str, ...] = ("male", "female")
ETHNICITIES: Tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
UNKNOWN = "unknown"
UNKNOWN_GENDER = len(GENDERS)
UNKNOWN_ETHNICITY = len(ETHNICITIES)
#: Every gender label by its code, unknown last.
GENDER_LABELS = GENDERS + (UNKNOWN,)
ETHNICITY_LABELS = ETHNICITIES + (UNKNOWN,)

#: Words accepted in a labels table (case-insensitive), besides the UTKFace codes themselves.
_GENDER_WORDS: Dict[str, int] = {"male": 0, "m": 0, "man": 0, "female": 1, "f": 1, "woman": 1}
_ETHNICITY_WORDS: Dict[str, int] = {"white": 0, "black": 1, "asian": 2, "indian": 3, "other": 4, "others": 4}


def code_or_unknown(value: Optional[int], unknown: int) -> int:
    """A batch's code for ``value`` (``unknown`` for ``None``)."""
    return unknown if value is None else value


def parse_gender(text: str) -> Optional[int]:
    """``0``/``1`` (UTKFace) or a word such as ``female``; ``None`` when empty or ``unknown``; ValueError else."""
    return _parse(text, len(GENDERS), _GENDER_WORDS, "gender", "male, female, 0 or 1")


def parse_ethnicity(text: str) -> Optional[int]:
    """``0``-``4`` (UTKFace) or a word such as ``Asian``; ``None`` when empty or ``unknown``; ValueError else."""
    return _parse(text, len(ETHNICITIES), _ETHNICITY_WORDS, "ethnicity", "White, Black, Asian, Indian, Others or 0-4")


def _parse(text: str, count: int, words: Dict[str, int], name: str, allowed: str) -> Optional[int]:
    value = text.strip().lower()
    if value in ("", UNKNOWN):
        return None
    if value.isdigit() and int(value) < count:
        return int(value)
    if value in words:
        return words[value]
    raise ValueError(f"{name} {text.strip()!r} is not one of {allowed}")
