"""The training command line's checks: a flag, path or combination a run could not use fails before any work, as one
line (:class:`~project.common.errors.UserError`) that says what to change."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from project.common.errors import UserError
from project.config.devices import process_count
from project.config.precision import finetune_all_blocker, int8_blocker
from project.config.settings import NetSettings, RunSettings
from project.data.sources import KINDS
from project.models.backbone import MIN_IMAGE_SIZE
from project.models.quantized import check_available as check_int8_available


def check_paths(args: argparse.Namespace) -> None:
    """Fail before any work on a file or folder the run could not use; raise :class:`UserError` with a fix."""
    if args.test_only and not args.ckpt_path:
        raise UserError("--test_only needs --ckpt_path PATH (a .ckpt written by a training run)")
    if args.ckpt_path and not Path(args.ckpt_path).is_file():
        raise UserError(f"--ckpt_path {args.ckpt_path} does not exist")
    if args.split_file and not Path(args.split_file).is_file():
        raise UserError(f"--split_file {args.split_file} does not exist")
    if args.data_dir is None:
        raise UserError(f"no dataset given: pass --data_dir PATH ({KINDS})")
    if not Path(args.data_dir).expanduser().exists():
        raise UserError(f"--data_dir {args.data_dir} does not exist; pass {KINDS}")
    weights = args.backbone_weights
    if weights not in ("imagenet", "none") and not Path(weights).expanduser().is_file():
        raise UserError(f"--backbone_weights {weights}: no such file (use imagenet, none or a path to a "
                        f"vgg16().features state dict)")
    check_writable(Path(args.default_root_dir))


def check_writable(folder: Path) -> None:
    """Fail before any work if run files could not be written (rather than after an hour of training)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --default_root_dir {folder} ({err.strerror or err}); choose a writable "
                        f"folder") from None


def check_settings(settings: RunSettings) -> None:
    """The values a run cannot work with, whether they came from a flag or a recipe."""
    data, trainer = settings.data, settings.trainer
    for name, value in (("batch_size", data.batch_size), ("max_epochs", trainer.max_epochs),
                        ("num_nodes", trainer.num_nodes)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1 (got {value})")
    image_size = settings.net.input.image_size
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image_size must be at least {MIN_IMAGE_SIZE}: VGG16 halves it five times (got "
                        f"{image_size})")
    if (trainer.patience is not None and trainer.patience < 0) or data.num_workers < 0:
        raise UserError("--patience and --num_workers cannot be negative")
    if not settings.optimizer.lr > 0:
        raise UserError(f"--lr must be positive (got {settings.optimizer.lr})")
    if settings.optimizer.weight_decay < 0:
        raise UserError(f"--weight_decay cannot be negative (got {settings.optimizer.weight_decay})")
    if data.group_people is not None and (not 0 < data.group_people < 2 or data.split != "grouped"):
        raise UserError(f"--group_people takes a descriptor distance between 0 and 2 (got {data.group_people}) and "
                        f"works with --split grouped only")
    if trainer.feature_precision == "int8":
        _check_int8(settings)


def _check_int8(settings: RunSettings) -> None:
    """int8 features (``--precision int8``, or a resumed run trained on them) are computed by onnxruntime on the
    CPU, in one process, into the feature cache."""
    trainer = settings.trainer
    blocker = int8_blocker(trainer.device_type, process_count(trainer.devices, trainer.num_nodes, trainer.device_type),
                           settings.data.feature_cache)
    if blocker:
        raise UserError(blocker)
    check_int8_available()


def check_trainable_here(net: NetSettings, device_type: str) -> None:
    """A network with nothing frozen (``--finetune all``) trains on a GPU only."""
    if not net.input.cacheable:
        blocker = finetune_all_blocker(device_type)
        if blocker:
            raise UserError(blocker)
