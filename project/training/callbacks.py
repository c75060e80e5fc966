"""Callbacks of a training run: exact resumption, fast head steps, and the run folder's bookkeeping."""

from __future__ import annotations

from typing import Any, Dict

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from project.common.runtime import keep_freed_memory, release_freed_memory
from project.training import run_files


class EpochSeeding(Callback):
    """Reseed every epoch from (seed, epoch): a run resumed from an epoch's checkpoint then draws exactly the
    same shuffles, mirror images and dropout masks as an uninterrupted run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl.seed_everything(self.seed + 1000 * trainer.current_epoch + trainer.global_rank, workers=True,
                           verbose=False)


class FastTrainingAllocator(Callback):
    """glibc keeps freed memory for reuse during the training loop only (see :mod:`project.common.runtime`)."""

    def on_train_start(self, trainer, pl_module) -> None:
        keep_freed_memory()

    def on_train_end(self, trainer, pl_module) -> None:
        release_freed_memory()

    def on_exception(self, trainer, pl_module, exception) -> None:
        release_freed_memory()


class RunFiles(Callback):
    """Writes the split, the skipped-file list and the run's settings into the run folder (rank 0 only)."""

    def __init__(self, record: Dict[str, Any]) -> None:
        self.record = record

    def on_fit_start(self, trainer, pl_module) -> None:
        run_dir = run_files.run_folder(trainer)  # a collective call under DDP: every rank makes it
        if not trainer.is_global_zero:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        datamodule.save_split(run_dir / run_files.SPLIT_FILE_NAME)
        datamodule.save_skipped(run_dir / run_files.SKIPPED_FILE_NAME)
        datamodule.save_duplicates(run_dir / run_files.DUPLICATES_FILE_NAME)
        split = datamodule.split  # the split the run uses, which a split file may have decided
        run_files.write_config(run_dir, {**self.record, "split": split.mode, "copy_labels": split.copy_labels})
