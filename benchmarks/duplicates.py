"""Copies of one photograph in UTKFace: how they are found, how long it takes, and whether the split keeps them apart.

    python benchmarks/duplicates.py --data_dir ../shared/data/UTKFace.tar.gz --seeds 42 0 1 --out results/copies.md

1. Times the copy search as a first run does it (fingerprints, hash candidates, pixel confirmation; no cache) and
   as a second run does (the cache).
2. The reference: the pixel correlation of *every* pair of images (64 x 64 grey, all 281 million pairs of UTKFace,
   a matrix product), so the pairs the hash step would miss are counted, not assumed; the hash distances of the
   pairs at or above the threshold are what ``HASH_DISTANCE`` was chosen from.
3. Per seed: for the random split of releases before 0.5.0 and for the grouped split under each copy policy, how
   many pairs at or above ``MIN_CORRELATION`` straddle train and test (and validation), and how many test faces
   have a copy in training (and how many of those under another age). The target is zero for the grouped split.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from project.config.devices import machine_name  # noqa: E402
from project.config.settings import default_cache_dir  # noqa: E402
from project.data import duplicates  # noqa: E402
from project.data.sources import resolve_data_dir, scan_source  # noqa: E402
from project.data.split import COPY_POLICIES, apply_copy_policy, new_split  # noqa: E402


def all_similar_pairs(thumbs: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """Every pair whose grey pixels correlate at least ``threshold``, by brute force: ``(i, j, correlation)``."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    norms[norms == 0] = np.inf
    flat /= norms[:, None]
    found = []
    for start in range(0, len(flat), block):
        similarity = flat[start:start + block] @ flat[start:].T
        i, j = np.nonzero(similarity >= threshold)
        keep = j > i
        found.append(np.stack([i[keep] + start, j[keep] + start, similarity[i[keep], j[keep]]], axis=1))
    return np.concatenate(found)


def straddling(pairs: np.ndarray, side: np.ndarray, a: str, b: str) -> int:
    """How many ``pairs`` have one image on side ``a`` and the other on side ``b``."""
    first, second = side[pairs[:, 0].astype(int)], side[pairs[:, 1].astype(int)]
    return int(np.sum(((first == a) & (second == b)) | ((first == b) & (second == a))))


def sides_of(split, count: int) -> np.ndarray:
    side = np.full(count, "out", dtype=object)
    for name, rows in split.indices.items():
        side[rows] = name
    return side


def test_faces_seen(pairs: np.ndarray, side: np.ndarray, ages: np.ndarray) -> Dict[str, int]:
    """Test faces with a copy in training, and how many of those carry another age there."""
    seen, other_age = set(), set()
    for i, j, _ in pairs:
        i, j = int(i), int(j)
        for test, train in ((i, j), (j, i)):
            if side[test] == "test" and side[train] == "train":
                seen.add(test)
                if ages[test] != ages[train]:
                    other_age.add(test)
    return {"seen": len(seen), "other_age": len(other_age)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    scan = scan_source(resolve_data_dir(args.data_dir, default_cache_dir()))
    items = scan.items
    relpaths = [item.relpath for item in items]
    lines: List[str] = [f"Machine: {machine_name()}; {len(items):,} images in {args.data_dir}", ""]

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        prints = duplicates.fingerprints(scan.root, relpaths, args.workers)
        fingerprinted = time.perf_counter()
        copies = duplicates.find_copies(prints)
        found = time.perf_counter()
        duplicates.copies_in(scan.root, items, Path(cache), args.workers)  # writes the cache
        cached_start = time.perf_counter()
        again = duplicates.copies_in(scan.root, items, Path(cache), args.workers)
        cached = time.perf_counter() - cached_start
    assert again.groups == copies.groups
    lines += ["| step | seconds |", "|---|---|",
              f"| fingerprints (read, hash bytes, decode to 64 x 64 grey, pHash) | {fingerprinted - started:.1f} |",
              f"| hash candidates and pixel confirmation | {found - fingerprinted:.1f} |",
              f"| first run in all | {found - started:.1f} |",
              f"| second run (cache) | {cached:.2f} |", ""]

    reference = all_similar_pairs(prints.thumbs[:, :, :], duplicates.MIN_CORRELATION)
    reference = reference[prints.decoded[reference[:, 0].astype(int)] & prints.decoded[reference[:, 1].astype(int)]]
    distance = np.bitwise_count(prints.hashes[reference[:, 0].astype(int)] ^ prints.hashes[reference[:, 1].astype(int)])
    linked = {(a, b) for a, b, _ in copies.pairs}
    missed = sum((int(a), int(b)) not in linked for a, b, _ in reference)
    clashes = duplicates.conflicting(copies, items)
    lines += [f"- pairs at or above correlation {duplicates.MIN_CORRELATION} (brute force over all pairs): "
              f"{len(reference):,}; found by the hash step and confirmation: {len(reference) - missed:,} "
              f"(missed: {missed})",
              f"- their hash distances (bits of 64): median {np.median(distance):.0f}, 99th percentile "
              f"{np.percentile(distance, 99):.0f}, largest {distance.max()} (candidates are taken up to "
              f"{duplicates.HASH_DISTANCE})",
              f"- {duplicates.copies_summary(copies, items)}",
              f"- groups of 2 / 3 / 4+ files: {sum(len(g) == 2 for g in copies.groups)} / "
              f"{sum(len(g) == 3 for g in copies.groups)} / {sum(len(g) >= 4 for g in copies.groups)}",
              f"- conflicting groups whose ages fall in different age groups: "
              f"{sum(len({items[r].group for r in g}) > 1 for g in clashes)}", ""]

    ages = np.array([item.age for item in items])
    usable = np.arange(len(items))
    header = ("| split | seed | train / val / test | left out | pairs train-test | pairs train-val | pairs val-test | "
              "test faces with a copy in training (another age) |")
    lines += [header, "|" + "---|" * 8]
    for seed in args.seeds:
        variants = [("random (before 0.5.0)", new_split(items, usable, seed))]
        for policy in COPY_POLICIES:
            rows, units, left_out = apply_copy_policy(items, usable, copies.groups, policy)
            variants.append((f"grouped, --copy_labels {policy}", new_split(items, rows, seed, units)))
        for name, split in variants:
            side = sides_of(split, len(items))
            seen = test_faces_seen(reference, side, ages)
            counts = " / ".join(f"{len(split.indices[s]):,}" for s in ("train", "val", "test"))
            lines.append(f"| {name} | {seed} | {counts} | {int(np.sum(side == 'out')):,} | "
                         f"{straddling(reference, side, 'train', 'test')} | "
                         f"{straddling(reference, side, 'train', 'val')} | "
                         f"{straddling(reference, side, 'val', 'test')} | {seen['seen']} ({seen['other_age']}) |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
