"""Copies of one photograph in a dataset: the same bytes, or the same picture re-encoded, resized or recoloured.

UTKFace holds about a thousand such pairs, most of them filed under two different ages; a split that puts one copy
in training and the other in the test set measures the model on a face it has seen. Two steps find them:

1. a 64-bit perceptual hash of every image (the DCT hash of ``imagehash.phash``: the 8 x 8 lowest frequencies of a
   32 x 32 grey image against their median; the 32 x 32 image here is the mean of 2 x 2 pixels of the thumbnail
   below, where imagehash resizes the original with LANCZOS), compared between all pairs: copies differ in a few
   bits, different faces in about half of them;
2. every pair within :data:`HASH_DISTANCE` bits is confirmed (or not) by the Pearson correlation of the two images
   as 64 x 64 grey pixels, which must reach :data:`MIN_CORRELATION`.

Files with the same bytes are copies whatever their pixels. The hash is a few lines of numpy on the same 64 x 64
grey thumbnail the confirmation needs, so one decode per image serves both and nothing is added to the
dependencies (``imagehash`` would pull in scipy and PyWavelets for one function and decode each image again). Both
thresholds were chosen on UTKFace (docs/decisions.md, "Copies of one photo stay on one side"). The result is cached
per dataset (keyed, like the feature cache, by the files' names and sizes), so only a first run pays for the scan.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from project.common.fileutils import write_json_atomic
from project.common.union_find import UnionFind
from project.data.scan import FaceItem, files_digest

#: side of the grey thumbnail the correlation is computed on (and the hash from)
THUMB_SIZE = 64
#: pHash: the DCT of a 32 x 32 grey image, its 8 x 8 lowest frequencies, each above or below their median
HASH_INPUT = 32
HASH_SIDE = 8
#: pairs whose hashes differ in at most this many of 64 bits are compared pixel by pixel
HASH_DISTANCE = 14
#: two images whose 64 x 64 grey pixels correlate at least this much are one photograph
MIN_CORRELATION = 0.95
#: what the cache key says about the method: a new method or threshold gives a new key
METHOD = f"phash{HASH_SIDE * HASH_SIDE}-d{HASH_DISTANCE}-corr{THUMB_SIZE}-{MIN_CORRELATION}-v1"


@dataclass(frozen=True)
class Fingerprints:
    """Per image: a digest of its bytes, its 64-bit perceptual hash and its grey thumbnail (``None`` rows: the
    image could not be decoded)."""

    digests: List[str]
    hashes: np.ndarray  # uint64, one per image
    thumbs: np.ndarray  # uint8, (images, THUMB_SIZE, THUMB_SIZE)
    decoded: np.ndarray  # bool, one per image


def _dct_matrix(size: int) -> np.ndarray:
    """The (unnormalised) DCT-II as a matrix: ``D @ x`` is scipy's ``dct(x, type=2)`` up to a factor of 2."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    return np.cos(np.pi * k * (2 * n + 1) / (2 * size))


_DCT = _dct_matrix(HASH_INPUT)
_BIT_WEIGHTS = (np.uint64(1) << np.arange(HASH_SIDE * HASH_SIDE, dtype=np.uint64)[::-1])


def perceptual_hashes(thumbs: np.ndarray) -> np.ndarray:
    """The 64-bit DCT hash of each grey thumbnail (``(n, THUMB_SIZE, THUMB_SIZE)`` uint8) as uint64."""
    factor = THUMB_SIZE // HASH_INPUT
    small = thumbs.astype(np.float64).reshape(len(thumbs), HASH_INPUT, factor, HASH_INPUT, factor).mean(axis=(2, 4))
    low = (_DCT @ small @ _DCT.T)[:, :HASH_SIDE, :HASH_SIDE].reshape(len(thumbs), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def grey_thumbnail(data: bytes) -> np.ndarray:
    """The image in ``data`` as a ``THUMB_SIZE`` square of grey pixels (uint8); the JPEG decoder is asked for a
    reduced size first, which makes the decode several times faster."""
    import io

    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (THUMB_SIZE * 2, THUMB_SIZE * 2))
        grey = image.convert("L").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(grey, dtype=np.uint8)


def _fingerprint(path: Path) -> Tuple[str, Optional[np.ndarray]]:
    data = path.read_bytes()
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        return digest, grey_thumbnail(data)
    except Exception:  # noqa: BLE001 - any decoder failure: the image is reported as undecodable elsewhere
        return digest, None


def fingerprints(root: Path, relpaths: Sequence[str], workers: int = 2) -> Fingerprints:
    """Fingerprint every image (PIL releases the GIL while decoding, so threads share the work)."""
    from tqdm.auto import tqdm

    from project.common.progress import progress_interval

    paths = [Path(root) / relpath for relpath in relpaths]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(tqdm(pool.map(_fingerprint, paths, chunksize=64), total=len(paths), unit=" images",
                            desc="Looking for copies", mininterval=progress_interval(), leave=False))
    decoded = np.array([thumb is not None for _, thumb in results], dtype=bool)
    blank = np.zeros((THUMB_SIZE, THUMB_SIZE), dtype=np.uint8)
    thumbs = np.stack([thumb if thumb is not None else blank for _, thumb in results]) if results \
        else np.zeros((0, THUMB_SIZE, THUMB_SIZE), dtype=np.uint8)
    return Fingerprints([digest for digest, _ in results], perceptual_hashes(thumbs), thumbs, decoded)


def hash_candidates(hashes: np.ndarray, max_distance: int = HASH_DISTANCE, block: int = 512) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, whose hashes differ in at most ``max_distance`` bits (all pairs are
    compared, a block of rows at a time: about 2 s for UTKFace's 23,707 images)."""
    pairs = []
    for start in range(0, len(hashes), block):
        rows = hashes[start:start + block]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, start:])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i  # j counts from ``start``: i < j within the block, every later column after it
        pairs.append(np.stack([i[keep] + start, j[keep] + start], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def correlations(thumbs: np.ndarray, pairs: np.ndarray, block: int = 16384) -> np.ndarray:
    """Pearson correlation of the grey pixels of each pair of thumbnails (a flat image correlates as 0), a block
    of pairs at a time (a million candidate pairs would otherwise need gigabytes)."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    norms[norms == 0] = np.inf
    flat /= norms[:, None]
    scores = [np.einsum("ij,ij->i", flat[chunk[:, 0]], flat[chunk[:, 1]])
              for chunk in np.array_split(pairs, max(1, -(-len(pairs) // block)))]
    return np.concatenate(scores) if len(pairs) else np.zeros(0, dtype=np.float32)


@dataclass
class CopyGroups:
    """Groups of two or more images that are one photograph, as row numbers into the items scanned, with the
    evidence: each linked pair and its pixel correlation (1.0 for the same bytes)."""

    groups: List[List[int]]
    pairs: List[Tuple[int, int, float]] = field(default_factory=list)


def find_copies(prints: Fingerprints) -> CopyGroups:
    """Group the images that are copies: same bytes, or hashes within ``HASH_DISTANCE`` bits and pixels correlating
    at least ``MIN_CORRELATION`` (groups are closed under the links: a copy of a copy is in the group)."""
    count = len(prints.digests)
    links: List[Tuple[int, int, float]] = []
    first_with: Dict[str, int] = {}
    for row, digest in enumerate(prints.digests):
        if digest in first_with:
            links.append((first_with[digest], row, 1.0))
        else:
            first_with[digest] = row
    decoded = np.flatnonzero(prints.decoded)
    candidates = decoded[hash_candidates(prints.hashes[decoded])] if len(decoded) else np.zeros((0, 2), int)
    scores = correlations(prints.thumbs, candidates)
    same_bytes = {(a, b) for a, b, _ in links}
    links += [(int(a), int(b), round(float(s), 4)) for (a, b), s in zip(candidates, scores)
              if s >= MIN_CORRELATION and (int(a), int(b)) not in same_bytes]
    copies = UnionFind(range(count))
    for a, b, _ in links:
        copies.union(a, b)
    return CopyGroups(copies.groups(row for a, b, _ in links for row in (a, b)), sorted(links))


def cache_path(cache_dir: Path, root: Path, items: Sequence[FaceItem]) -> Path:
    """Where the copies of these items are cached: keyed by the method and the files' names and sizes, in order
    (the same key as the feature cache uses for the images)."""
    key = hashlib.sha256(f"{METHOD}\n{files_digest(root, [item.relpath for item in items])}".encode())
    return Path(cache_dir) / "duplicates" / f"copies-{key.hexdigest()[:20]}.json"


def copies_in(root: Path, items: Sequence[FaceItem], cache_dir: Optional[Path], workers: int = 2) -> CopyGroups:
    """The groups of copies among ``items`` (rows of ``items``), from the cache when it has them."""
    path = cache_path(cache_dir, root, items) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            payload = json.loads(path.read_text())
            return CopyGroups([list(group) for group in payload["groups"]],
                              [(int(a), int(b), float(s)) for a, b, s in payload["pairs"]])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache file is computed again
    copies = find_copies(fingerprints(root, [item.relpath for item in items], workers))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"method": METHOD, "images": len(items), "groups": copies.groups,
                                 "pairs": copies.pairs})
    return copies


def default_workers() -> int:
    """Threads for fingerprinting: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- what a run and --check_data report ---------------------------------------------------------------------------
REPORT_FILE_NAME = "duplicates.csv"


def conflicting(copies: CopyGroups, items: Sequence[FaceItem]) -> List[List[int]]:
    """The groups whose copies carry different ages."""
    return [group for group in copies.groups if len({items[row].age for row in group}) > 1]


def copies_summary(copies: CopyGroups, items: Sequence[FaceItem], left_out: Optional[Dict[int, str]] = None,
                   policy: Optional[str] = None) -> str:
    """One line: how many groups of copies, how many with conflicting ages, and what the policy left out."""
    if not copies.groups:
        return f"no copies among {len(items):,} images"
    files = sum(len(group) for group in copies.groups)
    clashes = conflicting(copies, items)
    example = ""
    if clashes:
        ages = sorted({items[row].age for row in clashes[0]})
        example = f" (e.g. {items[clashes[0][0]].relpath} filed as {' and '.join(map(str, ages))})"
    groups = f"{len(copies.groups):,} group{'s' if len(copies.groups) != 1 else ''}"
    line = f"{groups} of copies ({files:,} of {len(items):,} images), {len(clashes):,} with conflicting ages{example}"
    if policy is not None:
        line += f"; --copy_labels {policy} left out {len(left_out or {}):,} files"
    return line


def write_report(path: Path, copies: CopyGroups, items: Sequence[FaceItem],
                 left_out: Optional[Dict[int, str]] = None) -> Path:
    """``duplicates.csv``: one row per file of each group of copies, with the group's ages, whether they agree,
    the file's strongest pixel correlation with another copy, and whether the split kept it."""
    import csv

    best: Dict[int, float] = {}
    for a, b, score in copies.pairs:
        for row in (a, b):
            best[row] = max(best.get(row, -1.0), score)
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "file", "age", "group_ages", "ages_agree", "correlation", "kept"])
        for number, group in enumerate(copies.groups, start=1):
            ages = [items[row].age for row in group]
            for row in group:
                kept = "yes" if left_out is None or row not in left_out else f"no: {left_out[row]}"
                writer.writerow([number, items[row].relpath, items[row].age, " ".join(map(str, ages)),
                                 "yes" if len(set(ages)) == 1 else "no", f"{best.get(row, 1.0):.4f}",
                                 kept if left_out is not None else ""])
    return path
