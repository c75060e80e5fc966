"""The run folder (``lightning_logs/version_N``): its file names, and reading and writing them.

    checkpoints/        best-epoch=..-val_acc=....ckpt, last.ckpt
    metrics.csv         per-epoch metrics (Lightning's CSV logger)
    test_metrics.json   what the test pass measured
    split.json          the validation and test file names and the seed
    slices.csv          accuracy and errors in years per gender, ethnicity and age band
    skipped_files.txt   every unusable file with its reason (only when there were some)
    duplicates.csv      every group of copies of one photograph, their ages and which were kept (a new grouped split)
    run_config.json     the run's settings under their flag names (``RunSettings.record``)
    plots/              the run's figures
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytorch_lightning as pl

from project.common.fileutils import write_json_atomic
from project.core.age_report import write_slices_csv
from project.data.datamodule import DUPLICATES_FILE_NAME, SKIPPED_FILE_NAME  # noqa: F401 - run files
from project.models.checkpoint import run_folder_of as run_dir_of  # noqa: F401 - the run folder of a checkpoint

SPLIT_FILE_NAME = "split.json"
METRICS_FILE_NAME = "test_metrics.json"
SLICES_FILE_NAME = "slices.csv"
CONFIG_FILE_NAME = "run_config.json"
LAST_CHECKPOINT_NAME = "last.ckpt"


def run_folder(trainer: pl.Trainer) -> Path:
    """The run's folder (``lightning_logs/version_N``; ``default_root_dir`` when logging is off, as in
    ``--fast_dev_run``). ``trainer.log_dir`` is a collective call under DDP: every rank must make it."""
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir)


def version_of(checkpoint: Path) -> Optional[int]:
    """``N`` of the ``version_N`` run folder a checkpoint belongs to (None elsewhere)."""
    name = Path(checkpoint).parent.parent.name
    return int(name.split("_")[-1]) if name.startswith("version_") else None


def latest_last_checkpoint(root: Path) -> Optional[Path]:
    """``last.ckpt`` of the newest run under ``root/lightning_logs`` (None when there is none)."""
    candidates = sorted(root.glob(f"lightning_logs/version_*/checkpoints/{LAST_CHECKPOINT_NAME}"),
                        key=lambda p: int(p.parent.parent.name.split("_")[-1]))
    return candidates[-1] if candidates else None


def write_config(run_dir: Path, record: Dict[str, Any]) -> None:
    write_json_atomic(run_dir / CONFIG_FILE_NAME, json.loads(json.dumps(record, default=str)))


def read_config(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run's ``run_config.json`` (None when the run has none)."""
    path = Path(run_dir) / CONFIG_FILE_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def split_settings_of(run_dir: Path) -> Dict[str, Any]:
    """The data settings that give a run's split again: its ``split.json``; without it, how its ``run_config.json``
    says it split (runs of releases before 0.5.0 recorded nothing: they split file by file); empty without either."""
    if (run_dir / SPLIT_FILE_NAME).is_file():
        return {"split_file": run_dir / SPLIT_FILE_NAME}
    config = read_config(run_dir)
    if config is None:
        return {}
    return {"split": config.get("split") or "random", "copy_labels": config.get("copy_labels") or "drop"}


def write_metrics(path: Path, payload: Dict[str, Any]) -> Path:
    """``test_metrics.json`` (or any metrics file) and, beside it, the slice table as CSV: ``slices.csv`` in a run
    folder, ``NAME.slices.csv`` for a metrics file of another name."""
    path = Path(path)
    write_json_atomic(path, payload)
    if payload.get("slices"):
        slices = path.with_name(SLICES_FILE_NAME if path.name == METRICS_FILE_NAME else f"{path.stem}.slices.csv")
        write_slices_csv(payload["slices"], slices)
    return path
