"""The stratified, seeded train / validation / test split and its ``split.json``.

``split.json`` records the validation and test file names (and the seed and counts), so a later ``--test_only`` or
``--resume`` uses exactly the same images whatever the seed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from project.age_groups import GROUP_LABELS, NUM_CLASSES
from project.data.scan import FaceItem
from project.errors import UserError
from project.fileutils import write_json_atomic

SPLITS = ("train", "val", "test")
#: share of all images held out for testing, then share of the rest held out for validation (the notebook's 10 %)
TEST_FRACTION = 0.1
VAL_FRACTION = 0.1


def stratified_split(groups: Sequence[int], seed: int, test_fraction: float = TEST_FRACTION,
                     val_fraction: float = VAL_FRACTION) -> Dict[str, np.ndarray]:
    """Seeded split stratified by age group: ``test_fraction`` of all items, then ``val_fraction`` of the rest.

    Every group contributes ``round(n * fraction)`` items, so rare groups keep their share. The result depends
    only on ``groups`` (in the order given) and ``seed``. Returns sorted index arrays ``train``, ``val``, ``test``.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    parts: Dict[str, List[np.ndarray]] = {name: [] for name in SPLITS}
    for group in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(groups == group))
        n_test = int(round(len(members) * test_fraction))
        rest = members[n_test:]
        n_val = int(round(len(rest) * val_fraction))
        parts["test"].append(members[:n_test])
        parts["val"].append(rest[:n_val])
        parts["train"].append(rest[n_val:])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


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

    def save(self, path: Path, all_items: Sequence[FaceItem], seed: int) -> Path:
        """Write ``split.json``: the val/test file names, the seed and the counts."""
        write_json_atomic(path, {
            "seed": seed,
            "groups": list(GROUP_LABELS),
            "counts": self.class_counts(all_items),
            "val": [item.relpath for item in self.items(all_items, "val")],
            "test": [item.relpath for item in self.items(all_items, "test")],
        })
        return Path(path)


#: Two images to train on (BatchNorm needs two), one to validate, one to test.
MIN_IMAGES = 4


def new_split(all_items: Sequence[FaceItem], usable: np.ndarray, seed: int) -> Split:
    """A fresh stratified split of the ``usable`` rows of ``all_items``.

    On a small set the per-group rounding can leave validation or test empty (a group needs 6 images before 10 %
    of it rounds to one); then the largest group's training images give one image to each empty split, so any set
    of at least :data:`MIN_IMAGES` images splits.
    """
    if len(usable) < MIN_IMAGES:
        raise UserError(f"too few images to split: {len(usable)} usable; at least {MIN_IMAGES} are needed (two to "
                        f"train on, one to validate, one to test), and a few hundred for a useful model")
    groups = np.array([all_items[i].group for i in usable])
    indices = stratified_split(groups, seed)
    rng = np.random.default_rng(seed)
    for name in ("test", "val"):
        if len(indices[name]) == 0:
            train = indices["train"]
            largest = np.bincount(groups[train]).argmax()
            moved = rng.choice(train[groups[train] == largest])
            indices["train"] = train[train != moved]
            indices[name] = np.array([moved], dtype=np.int64)
    return Split({name: usable[rows] for name, rows in indices.items()})


def split_names(path: Path) -> Dict[str, List[str]]:
    """The ``val`` and ``test`` file names of a ``split.json`` (one-line :class:`UserError` when it is unreadable)."""
    try:
        payload = json.loads(Path(path).read_text())
        return {"val": list(payload["val"]), "test": list(payload["test"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read split file {path} ({err}); pass the split.json of the run") from None


def load_split(path: Path, all_items: Sequence[FaceItem], usable: np.ndarray, root: Path) -> Split:
    """The split of ``split.json`` at ``path``: its val and test images, and every other usable item for training."""
    names = split_names(path)
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
    held_out = set(indices["val"].tolist()) | set(indices["test"].tolist())
    indices["train"] = np.array([i for i in usable if i not in held_out], dtype=np.int64)
    return Split(indices)
