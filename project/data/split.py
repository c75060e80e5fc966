"""The stratified, seeded train / validation / test split and its ``split.json``.

The default split is group-aware: copies of one photograph (``project.data.duplicates``) are one unit that falls on
one side, and copies whose ages disagree are handled by a policy (:data:`COPY_POLICIES`). ``--split random``
splits file by file as releases before 0.5.0 did. ``split.json`` records the validation and test file names (and
the seed, the counts and the files the copy policy left out), so a later ``--test_only`` or ``--resume`` uses
exactly the same images whatever the seed; a ``split.json`` of an earlier release reads as it always did.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median_low
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from project.common.errors import UserError
from project.common.fileutils import write_json_atomic
from project.common.union_find import UnionFind
from project.core.age_groups import GROUP_LABELS, NUM_CLASSES
from project.data.scan import FaceItem

SPLITS = ("train", "val", "test")
#: ``grouped``: copies of one photograph stay on one side (the default); ``random``: file by file (before 0.5.0)
SPLIT_MODES = ("grouped", "random")
#: what happens to copies of one photograph whose ages disagree: ``drop`` leaves the group out, ``median`` keeps
#: the copy with the median age, ``keep`` keeps every copy (all on one side). Copies that agree keep one file,
#: except under ``keep``. Why ``drop`` is the default: docs/decisions.md, "Copies of one photo stay on one side".
COPY_POLICIES = ("drop", "median", "keep")
#: share of all images held out for testing, then share of the rest held out for validation (the notebook's 10 %)
TEST_FRACTION = 0.1
VAL_FRACTION = 0.1


def stratified_split(groups: Sequence[int], seed: int, test_fraction: float = TEST_FRACTION,
                     val_fraction: float = VAL_FRACTION, sizes: Optional[Sequence[int]] = None
                     ) -> Dict[str, np.ndarray]:
    """Seeded split of units stratified by age group: ``test_fraction`` of all images, then ``val_fraction`` of the
    rest.

    A unit is one image, or (with ``sizes``) a group of ``sizes[i]`` copies that must stay together. Every age group
    contributes units until its images reach ``round(n * fraction)`` as nearly as whole units allow, so rare groups
    keep their share; with single images this is exactly the file-by-file split of earlier releases. The result
    depends only on ``groups`` and ``sizes`` (in the order given) and ``seed``. Returns sorted index arrays of units
    ``train``, ``val``, ``test``.
    """
    groups = np.asarray(groups)
    sizes = np.ones(len(groups), dtype=np.int64) if sizes is None else np.asarray(sizes, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: Dict[str, List[np.ndarray]] = {name: [] for name in SPLITS}
    for group in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(groups == group))
        n_test = _units_for(sizes[members], test_fraction)
        rest = members[n_test:]
        n_val = _units_for(sizes[rest], val_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(rest[:n_val])
        parts["train"].append(rest[n_val:])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


def _units_for(sizes: np.ndarray, fraction: float) -> int:
    """How many of these units (in order) hold ``round(images * fraction)`` images, as nearly as possible."""
    target = int(round(int(sizes.sum()) * fraction))
    if np.all(sizes == 1):
        return target
    filled = np.concatenate([[0], np.cumsum(sizes)])
    return int(np.argmin(np.abs(filled - target)))


@dataclass
class Split:
    """Indices into a scan's items for each of ``train``, ``val`` and ``test``."""

    indices: Dict[str, np.ndarray]

    def items(self, all_items: Sequence[FaceItem], name: str) -> List[FaceItem]:
        """The items of split ``name``."""
        return [all_items[i] for i in self.indices[name]]

    def class_counts(self, all_items: Sequence[FaceItem]) -> Dict[str, List[int]]:
        """Images per age group in each split."""
        counts = {}
        for name in SPLITS:
            tally = Counter(item.group for item in self.items(all_items, name))
            counts[name] = [tally.get(group, 0) for group in range(NUM_CLASSES)]
        return counts

    #: how the split was made (``grouped`` or ``random``; ``None``: read from a split.json) and with which policy
    mode: Optional[str] = None
    copy_labels: Optional[str] = None
    #: usable files the copy policy left out of every split
    left_out: Tuple[str, ...] = ()

    def save(self, path: Path, all_items: Sequence[FaceItem], seed: int) -> Path:
        """Write ``split.json``: the val/test file names, the seed, the counts and the files left out."""
        write_json_atomic(path, {
            "seed": seed,
            "split": self.mode,
            "copy_labels": self.copy_labels,
            "groups": list(GROUP_LABELS),
            "counts": self.class_counts(all_items),
            "val": [item.relpath for item in self.items(all_items, "val")],
            "test": [item.relpath for item in self.items(all_items, "test")],
            "left_out": list(self.left_out),
        })
        return Path(path)


#: Two images to train on (BatchNorm needs two), one to validate, one to test.
MIN_IMAGES = 4


def new_split(all_items: Sequence[FaceItem], usable: np.ndarray, seed: int,
              unit_of: Optional[np.ndarray] = None) -> Split:
    """A fresh stratified split of the ``usable`` rows of ``all_items``.

    ``unit_of``: per usable row, the id of the unit it belongs to (rows of one unit - copies of one photograph -
    fall on one side; a unit is stratified by the age group of its first row). Without it every row is its own
    unit. On a small set the per-group rounding can leave validation or test empty (a group needs 6 images before
    10 % of it rounds to one); then the largest group's training units give one unit to each empty split, so any
    set of at least :data:`MIN_IMAGES` units splits.
    """
    usable = np.asarray(usable, dtype=np.int64)
    unit_of = np.arange(len(usable)) if unit_of is None else np.asarray(unit_of)
    unit_ids, first_row, unit_index = np.unique(unit_of, return_index=True, return_inverse=True)
    if len(unit_ids) < MIN_IMAGES:
        raise UserError(f"too few images to split: {len(unit_ids)} usable; at least {MIN_IMAGES} are needed (two to "
                        f"train on, one to validate, one to test; copies of one photo count once), and a few "
                        f"hundred for a useful model")
    groups = np.array([all_items[usable[row]].group for row in first_row])
    sizes = np.bincount(unit_index, minlength=len(unit_ids))
    indices = stratified_split(groups, seed, sizes=sizes)
    rng = np.random.default_rng(seed)
    for name in ("test", "val"):
        if len(indices[name]) == 0:
            train = indices["train"]
            largest = np.bincount(groups[train]).argmax()
            moved = rng.choice(train[groups[train] == largest])
            indices["train"] = train[train != moved]
            indices[name] = np.array([moved], dtype=np.int64)
    return Split({name: np.sort(usable[np.isin(unit_index, units)]) for name, units in indices.items()})


def apply_copy_policy(all_items: Sequence[FaceItem], usable: np.ndarray, copy_groups: Sequence[Sequence[int]],
                      policy: str, together: Sequence[Sequence[int]] = ()
                      ) -> Tuple[np.ndarray, np.ndarray, Dict[int, str]]:
    """The usable rows that stay, the unit id of each (rows of one unit fall on one side of the split) and, per row
    left out, why.

    ``copy_groups`` are groups of rows of ``all_items`` that are copies of one photograph, handled by ``policy``
    (see :data:`COPY_POLICIES`); ``together`` are further groups that must only share a side (the same person in
    other photos). Rows that are not usable are ignored.
    """
    if policy not in COPY_POLICIES:
        raise UserError(f"unknown copy policy {policy!r}: choose one of {', '.join(COPY_POLICIES)}")
    usable_set = set(np.asarray(usable).tolist())
    units = UnionFind(usable_set)
    left_out: Dict[int, str] = {}
    for group in list(copy_groups) + list(together):
        members = [row for row in group if row in usable_set]
        for row in members[1:]:
            units.union(members[0], row)
    for group in copy_groups:
        members = [row for row in group if row in usable_set]
        if len(members) < 2 or policy == "keep":
            continue
        ages = [all_items[row].age for row in members]
        if len(set(ages)) > 1 and policy == "drop":
            kept = None
        elif len(set(ages)) > 1:
            kept = members[ages.index(median_low(ages))]
        else:
            kept = members[0]
        for row in members:
            if row != kept:
                left_out[row] = ("copy with another age" if kept is None or all_items[kept].age != all_items[row].age
                                 else "copy of a file kept")
    rows = np.array(sorted(usable_set - set(left_out)), dtype=np.int64)
    return rows, np.array([units.find(row) for row in rows.tolist()], dtype=np.int64), left_out


def _read_split_file(path: Path) -> dict:
    """The payload of a ``split.json`` (one-line :class:`UserError` when it is unreadable)."""
    try:
        payload = json.loads(Path(path).read_text())
        payload["val"], payload["test"] = list(payload["val"]), list(payload["test"])
        return payload
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read split file {path} ({err}); pass the split.json of the run") from None


def split_names(path: Path) -> Dict[str, List[str]]:
    """The ``val`` and ``test`` file names of a ``split.json``, and the files its copy policy ``left_out`` (none in a
    split.json of a release before 0.5.0)."""
    payload = _read_split_file(path)
    return {"val": payload["val"], "test": payload["test"], "left_out": list(payload.get("left_out") or [])}


def load_split(path: Path, all_items: Sequence[FaceItem], usable: np.ndarray, root: Path) -> Split:
    """The split of ``split.json`` at ``path``: its val and test images, and every other usable item for training
    except the files its copy policy left out (a split.json of an earlier release has none)."""
    payload = _read_split_file(path)
    names = {"val": payload["val"], "test": payload["test"]}
    left_out = list(payload.get("left_out") or [])
    index = {item.relpath: i for i, item in enumerate(all_items)}
    indices: Dict[str, np.ndarray] = {}
    for name, relpaths in names.items():
        missing = [p for p in relpaths if p not in index]
        if missing:
            raise UserError(
                f"{len(missing)} {name} images of {path} are not in {root} (first: {missing[0]}); "
                f"pass the same --data_dir the run was trained on"
            )
        indices[name] = np.sort(np.array([index[p] for p in relpaths], dtype=np.int64))
    held_out = set(indices["val"].tolist()) | set(indices["test"].tolist()) | {index[p] for p in left_out if p in index}
    indices["train"] = np.array([i for i in usable if i not in held_out], dtype=np.int64)
    return Split(indices, mode=payload.get("split") or "random", copy_labels=payload.get("copy_labels"),
                 left_out=tuple(left_out))
