"""The same person in several UTKFace photos: how long dlib's descriptors take, and what grouping by a distance
threshold makes of the set.

    python benchmarks/people.py --data_dir ../shared/data/UTKFace.tar.gz > results/people.md

Describes every image once (cached like a run's, so a later ``--group_people`` run reuses it), then per threshold:
how many "people" the groups closed under the links make, the largest, and how many test faces of the seed-42
splits (file by file, and grouped by copies) have a face within the threshold in training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from project.config.devices import machine_name  # noqa: E402
from project.config.settings import default_cache_dir  # noqa: E402
from project.data import duplicates, people  # noqa: E402
from project.data.sources import resolve_data_dir, scan_source  # noqa: E402
from project.data.split import apply_copy_policy, new_split  # noqa: E402


def components(table: np.ndarray, threshold: float) -> np.ndarray:
    """Per row, the id of its group closed under links below ``threshold`` (no size guard: this measures it)."""
    saved = people.MAX_GROUP_SHARE
    people.MAX_GROUP_SHARE = 1.0
    try:
        groups = people.same_person_groups(table, threshold)
    finally:
        people.MAX_GROUP_SHARE = saved
    ids = np.arange(len(table))
    for group in groups:
        ids[group] = group[0]
    return ids


def test_faces_with_a_neighbour_in_training(table: np.ndarray, threshold: float, split) -> int:
    train, test = table[split.indices["train"]], table[split.indices["test"]]
    found = 0
    for start in range(0, len(test), 512):
        block = test[start:start + 512]
        distances = np.sqrt(np.maximum(0, (block ** 2).sum(1)[:, None] + (train ** 2).sum(1)[None]
                                       - 2 * block @ train.T))
        found += int(np.sum(distances.min(axis=1) < threshold))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.35, 0.4, 0.5, 0.6])
    args = parser.parse_args()
    cache_dir = default_cache_dir()
    scan = scan_source(resolve_data_dir(args.data_dir, cache_dir))
    items = scan.items
    started = time.perf_counter()
    table = people.descriptors(scan.root, items, cache_dir, args.workers)
    seconds = time.perf_counter() - started
    lines = [f"Machine: {machine_name()}; {len(items):,} images; descriptors in {seconds / 60:.1f} min with "
             f"{args.workers} processes (0 if they were cached)", ""]
    usable = np.arange(len(items))
    copies = duplicates.copies_in(scan.root, items, cache_dir, args.workers)
    rows, units, _ = apply_copy_policy(items, usable, copies.groups, "drop")
    splits = {"random": new_split(items, usable, 42), "grouped": new_split(items, rows, 42, units)}
    lines += ["| distance below | \"people\" | with several photos | largest group | test faces with one in training "
              "(random split, seed 42) | (grouped split, seed 42) |", "|---|---|---|---|---|---|"]
    for threshold in args.thresholds:
        ids = components(np.nan_to_num(table, nan=1e3), threshold)
        sizes = np.bincount(ids)
        sizes = sizes[sizes > 0]
        lines.append(f"| {threshold} | {len(sizes):,} | {int(np.sum(sizes > 1)):,} | {int(sizes.max()):,} | "
                     f"{test_faces_with_a_neighbour_in_training(table, threshold, splits['random']):,} of "
                     f"{len(splits['random'].indices['test']):,} | "
                     f"{test_faces_with_a_neighbour_in_training(table, threshold, splits['grouped']):,} of "
                     f"{len(splits['grouped'].indices['test']):,} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
