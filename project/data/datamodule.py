"""UTKFaceDataModule: the images of a UTKFace folder, archive or labels table as train / validation / test
batches."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from project.common.errors import UserError
from project.config.settings import DataSettings, InputSettings, default_cache_dir
from project.data.datasets import (
    CachedFeatureDataset,
    ImageDataset,
    batch_is_ready,
    find_undecodable,
)
from project.data.duplicates import CopyGroups, copies_in, copies_summary, write_report
from project.data.feature_cache import FeatureCache, FeatureCacheBuilder, Shard
from project.data.samplers import EpochShuffleSampler, evaluation_sampler
from project.data.scan import UNDECODABLE_REASON, FaceItem, ScanResult
from project.data.sources import resolve_data_dir, scan_source
from project.data.split import SPLITS, Split, apply_copy_policy, load_split, new_split

log = logging.getLogger(__name__)

#: Training images an encoder that needs calibration (int8) is calibrated on.
CALIBRATION_IMAGES = 256

#: Where the run folder lists every skipped file (written by the training run's bookkeeping).
SKIPPED_FILE_NAME = "skipped_files.txt"
#: Where the run folder lists every group of copies of one photograph (a new grouped split only).
DUPLICATES_FILE_NAME = "duplicates.csv"


class UTKFaceDataModule(pl.LightningDataModule):
    """UTKFace as five age groups, split 90 % train / 10 % test, with 10 % of train held out for validation.

    Args:
        data: where the images are and how they are loaded (batch size, seed, workers, split file, ...).
        model_input: what the network sees (image size, mirror images); the same object the network is built from.
        features: with a feature-cache builder, batches hold cached backbone features instead of images. The
            builder runs its encoder once per image in :meth:`setup`, where a broken image is found up front.

    Batches are dicts (see ``project.data.datasets``): ``images`` or ``features`` with an explicit views dimension,
    ``group`` and ``age``. Training serves one view per face (with mirror images: the face or its mirror image at
    random; with photo views too: one of the three); validation and test serve ``input.views`` views, averaged by
    the model.
    """

    def __init__(self, data: DataSettings, model_input: InputSettings,
                 features: Optional[FeatureCacheBuilder] = None) -> None:
        super().__init__()
        if data.feature_cache != (features is not None):
            raise ValueError("data.feature_cache says whether a feature-cache builder is given")
        self.settings = data
        self.input = model_input
        self.features = features
        self.root: Optional[Path] = None
        self.scan: Optional[ScanResult] = None
        self.split: Optional[Split] = None
        self.caches: Dict[str, FeatureCache] = {}
        #: copies of one photograph found for a new grouped split, and the rows its copy policy left out
        self.copies: Optional[CopyGroups] = None
        self.left_out: Dict[int, str] = {}
        self.datasets: Dict[str, Dataset] = {}
        self.photo_views = model_input.photo_views

    @classmethod
    def from_path(cls, data_dir: Union[str, os.PathLike], model, *, batch_size: int = 64, seed: int = 42,
                  split_file: Union[str, os.PathLike, None] = None, num_workers: int = 2,
                  cache_dir: Union[str, os.PathLike, None] = None, feature_cache: bool = True,
                  precision: str = "32-true", strict_data: bool = False, split: str = "grouped",
                  copy_labels: str = "drop", group_people: Optional[float] = None) -> "UTKFaceDataModule":
        """The DataModule for ``model`` (a ``LitClassifier``, or its ``AgeNet``) on the images ``data_dir`` names:
        a UTKFace folder or archive, or a labels table.

        ``split_file``: a run's ``split.json`` (test a saved checkpoint on its own test images); else a new split
        seeded by ``seed`` (write it with :meth:`save_split`): ``split="grouped"`` keeps copies of one photograph
        on one side and treats copies with conflicting ages by ``copy_labels`` (``drop``, ``median`` or ``keep``);
        ``split="random"`` splits file by file as releases before 0.5.0 did; ``group_people`` (a dlib descriptor
        distance, with the faces extra) also keeps each person's photos on one side. With ``feature_cache`` the frozen
        backbone runs once per image and view, in ``precision`` (``32-true``, or ``bf16-mixed`` where the CPU or GPU
        has bf16), and the cache is kept in ``cache_dir`` (default: ``~/.cache/age-group-classifier``) for the next
        run.
        """
        net = getattr(model, "net", model)
        data = DataSettings(data_dir=Path(data_dir), cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                            batch_size=batch_size, seed=seed, num_workers=num_workers,
                            split_file=Path(split_file) if split_file else None, strict_data=strict_data,
                            feature_cache=feature_cache, split=split, copy_labels=copy_labels,
                            group_people=group_people)
        features = FeatureCacheBuilder(net.backbone, precision, data.cache_dir / "features",
                                       batch_size=max(batch_size, 32), num_workers=num_workers) \
            if feature_cache else None
        return cls(data, net.settings.input, features)

    # -- lightning hooks -------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Extract an archive (once per node, before the other processes look at it); under DDP, also find the
        copies (and people) a new grouped split needs, so that the other processes read them from the cache."""
        source = resolve_data_dir(self.settings.data_dir, self.settings.cache_dir)
        settings = self.settings
        if self.trainer is None or self.trainer.world_size == 1 or settings.split_file or settings.split != "grouped":
            return
        scan = scan_source(source)
        copies_in(scan.root, scan.items, settings.cache_dir, max(1, settings.num_workers))
        if settings.group_people is not None:
            from project.data.people import descriptors

            descriptors(scan.root, scan.items, settings.cache_dir, max(1, settings.num_workers))

    def setup(self, stage: Optional[str] = None) -> None:
        """Scan, validate and split the images; build or open the feature caches if they are used."""
        if self.split is not None:
            return
        # photo views serve training only: a re-test of a checkpoint neither builds nor reads their cache
        self.photo_views = self.input.photo_views and stage in (None, "fit")
        source = resolve_data_dir(self.settings.data_dir, self.settings.cache_dir)
        self.scan = scan_source(source)
        self.root = self.scan.root
        if self.features is None or self.features.needs_calibration:
            # No cache build to find the broken images, or one that needs the split first (its encoder is
            # calibrated on training images): a decode check, then the split.
            excluded = set(find_undecodable(self.root, self.scan.items, self.settings.num_workers))
            self._make_split(excluded)
            if self.features is not None:
                self.features.calibrate(self.root, self._calibration_items(), self.input.image_size)
                if not self._build_caches() <= excluded:
                    raise UserError(f"images in {self.root} changed while the run was setting up; run it again")
        else:
            self._make_split(self._build_caches())
        for name in SPLITS:
            self.datasets[name] = self._make_dataset(name)

    def _make_split(self, excluded: set) -> None:
        """Report the skipped files, then split the usable images (or read the split file)."""
        for row in sorted(excluded):
            self.scan.skipped.append((self.scan.items[row].relpath, UNDECODABLE_REASON))
        self._report_skipped()
        usable = np.array([i for i in range(len(self.scan.items)) if i not in excluded], dtype=np.int64)
        if self.settings.split_file:
            self.split = load_split(self.settings.split_file, self.scan.items, usable, self.root)
        else:
            self.split = self._new_split(usable)
        for name in SPLITS:
            if len(self.split.indices[name]) == 0:  # a split.json of other images, say
                raise UserError(f"the {name} split of {self.settings.split_file} holds no usable image")

    def _new_split(self, usable: np.ndarray) -> Split:
        """A new split of the usable rows: file by file, or with copies of one photograph kept together."""
        items, settings = self.scan.items, self.settings
        if settings.split == "random":
            split = new_split(items, usable, settings.seed)
            split.mode = "random"
            return split
        self.copies = copies_in(self.root, items, settings.cache_dir, max(1, settings.num_workers))
        together = self._people(usable) if settings.group_people is not None else []
        rows, units, self.left_out = apply_copy_policy(items, usable, self.copies.groups, settings.copy_labels,
                                                       together)
        split = new_split(items, rows, settings.seed, units)
        split.mode, split.copy_labels = "grouped", settings.copy_labels
        split.left_out = tuple(sorted(items[row].relpath for row in self.left_out))
        log.info("UTKFace: %s (list in %s of the run folder)", self.copies_summary(), DUPLICATES_FILE_NAME)
        return split

    def _people(self, usable: np.ndarray) -> List[List[int]]:
        """Groups of usable rows that show one person (``group_people``: dlib descriptors within that distance)."""
        from project.data.people import descriptors, people_summary, same_person_groups

        items, settings = self.scan.items, self.settings
        table = descriptors(self.root, items, settings.cache_dir, max(1, settings.num_workers))
        keep = np.zeros(len(items), dtype=bool)
        keep[usable] = True
        table = np.where(keep[:, None], table, np.nan)
        groups = same_person_groups(table, settings.group_people)
        log.info("UTKFace: %s", people_summary(groups, len(usable), settings.group_people))
        return groups

    def copies_summary(self) -> Optional[str]:
        """One line about the copies a new grouped split found (``None`` for other splits)."""
        if self.copies is None:
            return None
        return copies_summary(self.copies, self.scan.items, self.left_out, self.settings.copy_labels)

    def _calibration_items(self) -> List[FaceItem]:
        """Up to ``CALIBRATION_IMAGES`` training images, spread over the training split (never validation or test
        images), chosen by a fixed rule so the same split gives the same images."""
        train = self.split_items("train")
        picked = np.linspace(0, len(train) - 1, num=min(CALIBRATION_IMAGES, len(train))).round().astype(int)
        return [train[i] for i in sorted(set(picked.tolist()))]

    def _build_caches(self) -> set:
        """Build or open the cache of every view the model needs; returns the rows whose image cannot be decoded
        (the cache build decodes every image once, so broken files are found here, before any training)."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        views = ("original", "mirrored") if self.input.mirror else ("original",)
        views += ("photo",) if self.photo_views else ()
        shard = self._extraction_shard()
        excluded: set = set()
        for view in views:
            self.caches[view] = self.features.build(self.root, self.scan.items, self.input.image_size, view, device,
                                                    shard)
            excluded |= set(self.caches[view].undecodable_rows)
        return excluded

    def _extraction_shard(self) -> Optional[Shard]:
        """Under DDP, every process extracts its own share of the features: all processes of the job when they
        see one cache folder (a shared file system), else the processes of each node, each node its own copy."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        strategy = trainer.strategy
        if self._cache_dir_is_shared(strategy):
            return Shard(trainer.global_rank, trainer.world_size, strategy.barrier)
        return Shard(trainer.local_rank, trainer.num_devices, strategy.barrier)

    def _cache_dir_is_shared(self, strategy) -> bool:
        """Whether every process sees a file that the first process writes into the cache folder."""
        folder = self.features.cache_dir
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".shared-{strategy.broadcast(uuid.uuid4().hex)}"
        if strategy.global_rank == 0:
            probe.touch()
        strategy.barrier()
        shared = strategy.reduce_boolean_decision(probe.exists(), all=True)
        strategy.barrier()
        if strategy.global_rank == 0:
            probe.unlink()
        return shared

    def _make_dataset(self, name: str) -> Dataset:
        indices = self.split.indices[name]
        items = self.split_items(name)
        if not self.input.mirror:
            views = "original"
        else:
            training = "random+photo" if self.photo_views else "random"
            views = training if name == "train" else "both"
        if self.caches:
            return CachedFeatureDataset(self.caches, indices, items, views)
        return ImageDataset(self.root, items, self.input.image_size, views=views)

    def _loader(self, name: str) -> DataLoader:
        dataset = self.datasets[name]
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        training = name == "train"
        sampler = (EpochShuffleSampler(len(dataset), self.settings.seed) if training
                   else evaluation_sampler(dataset, world, rank))
        batch_size = self.settings.batch_size
        # BatchNorm (the compact head) cannot train on a batch of one item: drop such a last batch, and only then.
        # (Lightning's distributed sampler pads every process to the same count of items.)
        drop_last = training and -(-len(dataset) // world) % batch_size == 1
        # Each new iterator draws a seed for its workers; from the global RNG, that draw would come after
        # EpochSeeding's reseed in an uninterrupted run but before it in the first epoch of a resumed one (Lightning
        # makes that iterator earlier), and every mirror image and dropout mask after it would differ. Its own
        # generator keeps the global RNG for those alone, so a resumed run draws them as the uninterrupted one did.
        generator = torch.Generator().manual_seed(self.settings.seed)
        if isinstance(dataset, CachedFeatureDataset):
            # Reading a batch from the memory map costs far less than starting worker processes.
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=batch_is_ready,
                              drop_last=drop_last, generator=generator)
        workers = self.settings.num_workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                          generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    # -- what the run reports --------------------------------------------------------------------------------
    def split_items(self, name: str) -> List[FaceItem]:
        """The items of split ``name`` (``train``, ``val`` or ``test``)."""
        return self.split.items(self.scan.items, name)

    def class_counts(self) -> Dict[str, List[int]]:
        """Images per age group in each split."""
        return self.split.class_counts(self.scan.items)

    def save_split(self, path: Path) -> Path:
        """Write ``split.json`` so a later test or resume uses the same validation and test images."""
        return self.split.save(path, self.scan.items, self.settings.seed)

    def save_duplicates(self, path: Path) -> Optional[Path]:
        """Write ``duplicates.csv`` (every group of copies; nothing when the split did not look for them)."""
        if self.copies is None:
            return None
        return write_report(path, self.copies, self.scan.items, self.left_out)

    def save_skipped(self, path: Path) -> Optional[Path]:
        """Write every skipped file with its reason, one per line (nothing if none were skipped)."""
        if not self.scan or not self.scan.skipped:
            return None
        path = Path(path)
        path.write_text("".join(f"{name}\t{reason}\n" for name, reason in self.scan.skipped))
        return path

    def _report_skipped(self) -> None:
        if not self.scan.skipped:
            return
        if self.settings.strict_data:
            raise UserError(f"--strict_data: {self.scan.skipped_summary()}")
        log.warning("UTKFace: %s (full list in %s of the run folder)", self.scan.skipped_summary(), SKIPPED_FILE_NAME)
