"""UTKFace: file-name parsing, archive extraction, validation, the stratified split and the DataModule.

UTKFace file names look like ``{age}_{gender}_{race}_{datetime}.jpg.chip.jpg``. Only the age is needed; real
copies also hold names without the race field (still valid), names with stray spaces, macOS ``._*`` files,
notes and broken files. Everything that cannot be used is skipped and reported once, up front.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from project.age_groups import GROUP_LABELS, NUM_CLASSES, age_to_group
from project.errors import UserError
from project.fileutils import exclusive_lock, write_json_atomic
from project.transforms import build_transform, load_rgb_image, mirror

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLIT_FILE_NAME = "split.json"
SKIPPED_FILE_NAME = "skipped_files.txt"
#: Written into an extracted archive's folder: member names that occurred more than once (first copy kept).
ARCHIVE_DUPLICATES_FILE = ".archive_duplicates.txt"


def default_cache_dir() -> Path:
    """Where extracted archives and feature caches go when no ``--cache_dir`` is given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "age-group-classifier"


# --------------------------------------------------------------------------------------------------- names


def parse_age(file_name: str) -> Optional[int]:
    """The age encoded at the start of a UTKFace file name, or ``None`` if the name does not carry one.

    ``"25_0_1_20170116174525125.jpg.chip.jpg"`` -> 25; a missing race field (``"39_1_2017...jpg"``) and stray
    spaces (``" 25 _0_1_...jpg"``) are accepted.
    """
    stem = file_name.strip().split(".", 1)[0]
    fields = [part.strip() for part in stem.split("_")]
    if len(fields) < 2 or not fields[0].isdigit():
        return None
    return int(fields[0])


@dataclass(frozen=True)
class FaceItem:
    """One usable image: its path relative to the dataset root, its age and its age group."""

    relpath: str
    age: int
    group: int


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
    return "not a JPEG or PNG image"


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
        if name.startswith("._"):
            skipped.append((relpath, "macOS metadata file"))
            continue
        if not name.strip().lower().endswith(IMAGE_SUFFIXES):
            skipped.append((relpath, "not an image file name"))
            continue
        age = parse_age(name)
        if age is None:
            skipped.append((relpath, "name does not start with {age}_"))
            continue
        group = age_to_group(age)
        if group is None:
            skipped.append((relpath, f"age {age} outside 0-124"))
            continue
        key = name.strip()
        if key in seen:
            skipped.append((relpath, f"duplicate of {seen[key]}"))
            continue
        if check_images:
            problem = check_image_file(path)
            if problem:
                skipped.append((relpath, problem))
                continue
        seen[key] = relpath
        items.append(FaceItem(relpath, age, group))
    return ScanResult(root, items, skipped, files_seen=len(items) + len(skipped))


# ---------------------------------------------------------------------------------------------- archives


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _file_digest(path: Path) -> str:
    """The archive's content hash; remembered per (path, size, mtime), since prepare_data and setup both ask."""
    stat = path.stat()
    return _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def extraction_target(archive: Path, cache_dir: Optional[Path]) -> Path:
    """Where ``archive`` is (or will be) extracted: ``<cache_dir>/extracted/<name>-<content hash>``.

    Never beside the archive: the user's data folder may be shared or read-only, and the content hash means a
    replaced archive is extracted afresh while an unchanged one is extracted only once.
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "extracted" / f"{_archive_stem(archive)}-{_file_digest(archive)}"


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` once, atomically.

    Members go into a temporary sibling folder that is renamed to ``target`` only when extraction finished, so a
    run killed half-way leaves no ``target`` and the next run starts over (removing the leftover). Extraction uses
    tarfile's ``data`` filter: no absolute paths, no ``..``, no links out of the folder, no device files.
    """
    if target.is_dir():
        return target
    with exclusive_lock(target.parent / f".{target.name}.lock"):  # a second process waits, then finds it done
        if target.is_dir():
            return target
        for leftover in target.parent.glob(f".{target.name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
        try:
            _extract_members(archive, partial)
            os.replace(partial, target)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise UserError(
                f"{archive} is not a readable tar archive ({type(err).__name__}: {err}); re-download "
                f"UTKFace.tar.gz or pass the extracted folder as --data_dir"
            ) from None
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return target


def _extract_members(archive: Path, folder: Path) -> None:
    """Extract every member once (a repeated name keeps its first copy, recorded for the skipped-file report)."""
    from tqdm.auto import tqdm

    seen, duplicates = set(), []
    with tarfile.open(archive, "r:*") as tar, tqdm(desc=f"Extracting {archive.name}", unit=" files",
                                                   mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:
        for member in tar:
            if member.name in seen:
                duplicates.append(member.name)
                continue
            seen.add(member.name)
            tar.extract(member, folder, filter="data")
            bar.update(1)
    if duplicates:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ARCHIVE_DUPLICATES_FILE).write_text("".join(f"{name}\n" for name in duplicates))


def resolve_data_dir(data_dir: Optional[os.PathLike], cache_dir: Optional[Path] = None, extract: bool = True) -> Path:
    """The folder of images for ``data_dir`` (a folder, or an archive that is extracted once)."""
    if data_dir is None or str(data_dir) == "":
        raise UserError("no dataset given: pass --data_dir PATH (a UTKFace folder or UTKFace.tar.gz)")
    path = Path(data_dir).expanduser()
    if path.is_dir():
        return path
    if _is_archive(path):
        target = extraction_target(path, cache_dir)
        return extract_archive(path, target) if extract else target
    if path.exists():
        raise UserError(f"--data_dir {path} is neither a folder nor a .tar.gz/.tgz/.tar archive")
    raise UserError(f"--data_dir {path} does not exist; pass a UTKFace folder or UTKFace.tar.gz")


# ------------------------------------------------------------------------------------------------- split


def stratified_split(
    groups: Sequence[int], seed: int, test_fraction: float = 0.1, val_fraction: float = 0.1
) -> Dict[str, np.ndarray]:
    """Seeded split stratified by age group: ``test_fraction`` of all items, then ``val_fraction`` of the rest.

    Every group contributes ``round(n * fraction)`` items, so rare groups keep their share. The result depends
    only on ``groups`` (in the order given) and ``seed``. Returns sorted index arrays ``train``, ``val``, ``test``.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    parts: Dict[str, List[np.ndarray]] = {"train": [], "val": [], "test": []}
    for group in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(groups == group))
        n_test = int(round(len(members) * test_fraction))
        rest = members[n_test:]
        n_val = int(round(len(rest) * val_fraction))
        parts["test"].append(members[:n_test])
        parts["val"].append(rest[:n_val])
        parts["train"].append(rest[n_val:])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


# --------------------------------------------------------------------------------------------- datasets


#: Label returned by :class:`FaceImageDataset` (with ``mark_undecodable``) for a file that cannot be decoded.
UNDECODABLE = -1


def undecodable_rows(groups: torch.Tensor, first_row: int) -> List[int]:
    """The rows marked :data:`UNDECODABLE` in a batch of groups whose first item is row ``first_row``."""
    return [first_row + int(i) for i in torch.nonzero(groups == UNDECODABLE).flatten()]


#: How a dataset serves mirror images (see ``project.transforms.mirror``): ``none``; ``always`` (the mirrored feature
#: cache is built from these); ``random`` (training: each item mirrored with probability 1/2); ``both`` (evaluation:
#: ``2 x ...`` per item, the original then its mirror image, averaged by the model).
MIRROR_MODES = ("none", "always", "random", "both")


def _draw_mirror() -> bool:
    """One fair coin from torch's global RNG, per item: the image and the cached-feature datasets draw the same
    sequence, so training with and without the feature cache sees the same mirror images (and EpochSeeding reseeds
    it every epoch, so a resumed run does too)."""
    return bool(torch.rand(()) < 0.5)


def _check_mirror_mode(mode: str) -> str:
    if mode not in MIRROR_MODES:
        raise ValueError(f"unknown mirror mode {mode!r}; choose one of {', '.join(MIRROR_MODES)}")
    return mode


class FaceImageDataset(Dataset):
    """Decoded, preprocessed images: ``(3 x S x S tensor, group, age)`` for the given items.

    A file that passed the cheap header check but cannot be decoded raises a one-line :class:`UserError`, or, with
    ``mark_undecodable`` (used by the feature-cache build, which decodes every image once up front), yields a zero
    image with group :data:`UNDECODABLE` so the caller can skip and report it. ``mirror``: see :data:`MIRROR_MODES`.
    """

    def __init__(self, root: Path, items: Sequence[FaceItem], image_size: int, mark_undecodable: bool = False,
                 mirror: str = "none"):
        self.root = Path(root)
        self.items = list(items)
        self.image_size = image_size
        self.transform = build_transform(image_size)
        self.mark_undecodable = mark_undecodable
        self.mirror = _check_mirror_mode(mirror)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        item = self.items[index]
        path = self.root / item.relpath
        try:
            image = load_rgb_image(path)
        except Exception as err:  # passed the header check, but the pixel data is broken
            if self.mark_undecodable:
                return torch.zeros(3, self.image_size, self.image_size), UNDECODABLE, item.age
            reason = " ".join(str(err).split())[:160]
            raise UserError(f"cannot decode {path} ({type(err).__name__}: {reason}); delete or replace it") from None
        tensor = self.transform(image)
        if self.mirror == "always" or (self.mirror == "random" and _draw_mirror()):
            tensor = mirror(tensor)
        elif self.mirror == "both":
            tensor = torch.stack([tensor, mirror(tensor)])
        return tensor, item.group, item.age


class CachedFeatureDataset(Dataset):
    """Rows of a feature cache: ``(C x H x W float tensor, group, age)``, read a whole batch at a time.

    With ``mirror_cache`` (the features of the mirrored images, same rows) and ``mirror`` ``random`` or ``both``,
    items come from either cache or from both (see :data:`MIRROR_MODES`).
    """

    def __init__(self, cache, rows: np.ndarray, groups: Sequence[int], ages: Sequence[int],
                 mirror_cache=None, mirror: str = "none") -> None:
        self.cache = cache
        self.mirror_cache = mirror_cache
        self.mirror = _check_mirror_mode(mirror)
        if self.mirror != "none" and mirror_cache is None:
            raise ValueError(f"mirror={mirror!r} needs the mirrored feature cache")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        self.ages = torch.as_tensor(np.asarray(ages), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, groups, ages = self.__getitems__([index])
        return features[0], groups[0], ages[0]

    def __getitems__(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One fancy-indexed read of the memory map for the whole batch (DataLoader calls this when present)."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = self.rows[indices]
        if self.mirror == "none":
            features = self.cache.read(rows)
        elif self.mirror == "always":
            features = self.mirror_cache.read(rows)
        elif self.mirror == "both":
            features = torch.stack([self.cache.read(rows), self.mirror_cache.read(rows)], dim=1)
        else:
            mirrored = np.array([_draw_mirror() for _ in rows], dtype=bool)
            original = self.cache.read(rows[~mirrored])  # each row read once, from the cache of its view
            features = torch.empty((len(rows),) + tuple(original.shape[1:]), dtype=original.dtype)
            features[torch.from_numpy(~mirrored)] = original
            features[torch.from_numpy(mirrored)] = self.mirror_cache.read(rows[mirrored])
        return features, self.groups[indices], self.ages[indices]


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch, so a run resumed from a checkpoint sees exactly the order
    an uninterrupted run would have seen (the default sampler draws from the global RNG, whose state is not in the
    checkpoint).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def _batched_collate(batch):
    """Collate for :class:`CachedFeatureDataset`: ``__getitems__`` already returned a stacked batch."""
    return batch


# ------------------------------------------------------------------------------------------- datamodule


class UTKFaceDataModule(pl.LightningDataModule):
    """UTKFace as five age groups, split 90 % train / 10 % test, with 10 % of train held out for validation.

    Args:
        data_dir: a folder of UTKFace images or the official ``UTKFace.tar.gz`` (extracted once).
        batch_size: batch size per process.
        image_size: images are resized to ``image_size x image_size`` (224 in the notebook).
        seed: seeds the split, so the same seed gives the same test set.
        num_workers: DataLoader worker processes that decode images (not used with cached features).
        cache_dir: where archives are extracted (default ``~/.cache/age-group-classifier``).
        split_file: a ``split.json`` from an earlier run; its val/test images are used instead of a new split.
        strict_data: raise an error instead of skipping unusable files.
        mirror: train on randomly mirrored faces and evaluate each face together with its mirror image (the model
            averages both); with the feature cache this needs a second cache of the mirrored images' features.
    """

    def __init__(
        self,
        data_dir: Optional[os.PathLike] = None,
        batch_size: int = 32,
        image_size: int = 224,
        seed: int = 42,
        num_workers: int = 2,
        cache_dir: Optional[os.PathLike] = None,
        split_file: Optional[os.PathLike] = None,
        strict_data: bool = False,
        test_fraction: float = 0.1,
        val_fraction: float = 0.1,
        mirror: bool = False,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.split_file = Path(split_file) if split_file else None
        self.strict_data = strict_data
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.mirror = mirror
        self.feature_cache_builder = None
        self.mirrored_cache_builder = None
        self.mirrored_feature_cache = None
        self.root: Optional[Path] = None
        self.scan: Optional[ScanResult] = None
        self.split: Optional[Dict[str, np.ndarray]] = None
        self.feature_cache = None
        self.datasets: Dict[str, Dataset] = {}

    # -- configuration ---------------------------------------------------------------------------------------
    def use_feature_cache(self, builder, mirrored_builder=None) -> None:
        """Serve cached conv-base features instead of images (``builder`` is a :class:`FeatureCacheBuilder`;
        ``mirrored_builder`` makes the cache of the mirrored images, needed when ``mirror`` is on)."""
        if self.mirror and mirrored_builder is None:
            raise ValueError("mirror=True with the feature cache needs a builder of the mirrored images' cache")
        self.feature_cache_builder = builder
        self.mirrored_cache_builder = mirrored_builder if self.mirror else None

    # -- lightning hooks -------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Extract the archive (once per node, before the other processes look at it)."""
        resolve_data_dir(self.data_dir, self.cache_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        """Scan, validate and split the images; build or open the feature cache if one is used."""
        if self.split is not None:
            return
        self.root = resolve_data_dir(self.data_dir, self.cache_dir)
        self.scan = scan_utkface(self.root)
        if not self.scan.items:
            self._report_skipped()
            raise UserError(
                f"no UTKFace images in {self.root}: expected files named like 25_0_1_20170116174525125.jpg.chip.jpg"
            )
        excluded: set = set()
        if self.feature_cache_builder is not None:
            # The cache build decodes every image once, so it is also where undecodable files are found: up front.
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            self.feature_cache = self.feature_cache_builder.build(self.root, self.scan.items, device=device)
            excluded = set(self.feature_cache.undecodable_rows)
            if self.mirrored_cache_builder is not None:
                self.mirrored_feature_cache = self.mirrored_cache_builder.build(self.root, self.scan.items,
                                                                                device=device)
                excluded |= set(self.mirrored_feature_cache.undecodable_rows)
        else:
            excluded = self._undecodable_rows()
        for row in sorted(excluded):
            self.scan.skipped.append((self.scan.items[row].relpath, "cannot be decoded"))
        self._report_skipped()
        usable = np.array([i for i in range(len(self.scan.items)) if i not in excluded], dtype=np.int64)
        if self.split_file:
            self.split = self._load_split()
        else:
            groups = [self.scan.items[i].group for i in usable]
            split = stratified_split(groups, self.seed, self.test_fraction, self.val_fraction)
            self.split = {name: usable[indices] for name, indices in split.items()}
        for name in ("train", "val", "test"):
            if len(self.split[name]) == 0:
                raise UserError(
                    f"too few images to split: {len(usable)} usable in {self.root} leave the {name} split "
                    f"empty; use at least 20 images"
                )
        for name, indices in self.split.items():
            self.datasets[name] = self._make_dataset(indices, name)

    def _undecodable_rows(self) -> set:
        """Without a feature cache nothing decodes every image before training: decode each once here (tiny resize,
        so it costs about what reading the files does) and return the rows that fail, so a broken file is skipped
        and reported up front, as with the cache, instead of stopping the run in the middle of an epoch."""
        from tqdm.auto import tqdm

        check = FaceImageDataset(self.root, self.scan.items, image_size=32, mark_undecodable=True)
        loader = DataLoader(check, batch_size=64, num_workers=self.num_workers)
        rows: set = set()
        offset = 0
        with tqdm(total=len(check), unit="img", desc="Checking that every image decodes",
                  mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:
            for _images, groups, _ages in loader:
                rows.update(undecodable_rows(groups, offset))
                offset += len(groups)
                bar.update(len(groups))
        return rows

    def _make_dataset(self, indices: np.ndarray, name: str) -> Dataset:
        items = [self.scan.items[i] for i in indices]
        mirror_mode = "none" if not self.mirror else ("random" if name == "train" else "both")
        if self.feature_cache is not None:
            return CachedFeatureDataset(self.feature_cache, indices, [item.group for item in items],
                                        [item.age for item in items], self.mirrored_feature_cache, mirror_mode)
        return FaceImageDataset(self.root, items, self.image_size, mirror=mirror_mode)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[name]
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else self._evaluation_sampler(dataset)
        # BatchNorm (the compact head) cannot train on a batch of one item: drop such a last batch, and only then.
        drop_last = shuffle and self._items_per_process(len(dataset)) % self.batch_size == 1
        if isinstance(dataset, CachedFeatureDataset):
            # Reading a batch from the memory map costs far less than starting worker processes.
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_batched_collate,
                              drop_last=drop_last)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
        )

    def _items_per_process(self, size: int) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        return -(-size // world)  # Lightning's distributed sampler pads every process to the same count

    def _evaluation_sampler(self, dataset: Dataset) -> Optional[Sampler]:
        """Under DDP: each process gets a disjoint share of val/test, none padded or repeated.

        Lightning's default DistributedSampler pads the last batch with duplicates, which would make test accuracy
        under DDP differ from single-process accuracy; torchmetrics then combines the exact per-process counts.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                            shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # -- split bookkeeping -----------------------------------------------------------------------------------
    def split_items(self, name: str) -> List[FaceItem]:
        """The items of split ``name`` (``train``, ``val`` or ``test``)."""
        return [self.scan.items[i] for i in self.split[name]]

    def class_counts(self) -> Dict[str, List[int]]:
        """Images per age group in each split."""
        counts = {}
        for name in ("train", "val", "test"):
            tally = Counter(item.group for item in self.split_items(name))
            counts[name] = [tally.get(group, 0) for group in range(NUM_CLASSES)]
        return counts

    def save_split(self, path: os.PathLike) -> Path:
        """Write the val/test file names (and the seed and counts) so a later test uses the same images."""
        path = Path(path)
        payload = {
            "seed": self.seed,
            "groups": list(GROUP_LABELS),
            "counts": self.class_counts(),
            "val": [item.relpath for item in self.split_items("val")],
            "test": [item.relpath for item in self.split_items("test")],
        }
        write_json_atomic(path, payload)
        return path

    def save_skipped(self, path: os.PathLike) -> Optional[Path]:
        """Write every skipped file with its reason, one per line (nothing if none were skipped)."""
        if not self.scan or not self.scan.skipped:
            return None
        path = Path(path)
        path.write_text("".join(f"{name}\t{reason}\n" for name, reason in self.scan.skipped))
        return path

    def _load_split(self) -> Dict[str, np.ndarray]:
        try:
            payload = json.loads(self.split_file.read_text())
            names = {"val": payload["val"], "test": payload["test"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(
                f"cannot read split file {self.split_file} ({err}); pass the split.json of the run"
            ) from None
        index = {item.relpath: i for i, item in enumerate(self.scan.items)}
        split: Dict[str, np.ndarray] = {}
        for name, relpaths in names.items():
            missing = [p for p in relpaths if p not in index]
            if missing:
                raise UserError(
                    f"{len(missing)} {name} images of {self.split_file} are not in {self.root} (first: {missing[0]}); "
                    f"pass the same --data_dir the run was trained on"
                )
            split[name] = np.sort(np.array([index[p] for p in relpaths], dtype=np.int64))
        held_out = set(split["val"].tolist()) | set(split["test"].tolist())
        split["train"] = np.array([i for i in range(len(self.scan.items)) if i not in held_out], dtype=np.int64)
        return split

    def _report_skipped(self) -> None:
        if not self.scan.skipped:
            return
        if self.strict_data:
            raise UserError(f"--strict_data: {self.scan.skipped_summary()}")
        log.warning("UTKFace: %s (full list in %s of the run folder)", self.scan.skipped_summary(), SKIPPED_FILE_NAME)
