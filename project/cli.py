"""The command line behind ``project/lit_classifier_main.py``: argument parsing, fit + test, and re-test.

Small named steps in the style of torchvision's classification references: :func:`get_args_parser`,
:func:`validate_args`, :func:`build_datamodule`, :func:`build_trainer`, :func:`run_fit`, :func:`run_test`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from project.datasets.utkface import SKIPPED_FILE_NAME, SPLIT_FILE_NAME, UTKFaceDataModule, default_cache_dir
from project.errors import DEBUG_ENV, OneLineArgumentParser, UserError, exit_on_user_error, first_line
from project.features import FeatureCacheBuilder
from project.fileutils import write_json_atomic
from project.lit_classifier_main import LitClassifier, load_classifier
from project.models.backbone import MIN_IMAGE_SIZE
from project.precision import CHOICES as PRECISION_CHOICES
from project.precision import device_type_for, resolve_precision
from project.recipes import DEFAULT as DEFAULT_RECIPE
from project.recipes import NOTEBOOK as NOTEBOOK_RECIPE
from project.recipes import RECIPES
from project.runtime import keep_freed_memory, release_freed_memory

PROGRAM = "lit_classifier_main.py"
METRICS_FILE_NAME = "test_metrics.json"
CONFIG_FILE_NAME = "run_config.json"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (flags whose default comes from the recipe say so in their help)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _recipe_values(name: str) -> str:
    """Help text: what each recipe sets ``name`` to."""
    return "recipe: " + ", ".join(f"{recipe.name} {getattr(recipe, name)}" for recipe in RECIPES.values())


def get_args_parser() -> argparse.ArgumentParser:
    """All flags, with Lightning-like names."""
    parser = OneLineArgumentParser(
        prog=PROGRAM,
        description="Train (and test) a frozen-VGG16 age-group classifier on UTKFace, or re-test a checkpoint.",
        formatter_class=_HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", type=str, default=None, help="UTKFace folder or UTKFace.tar.gz")
    data.add_argument("--image_size", type=int, default=224, help="images are resized to this square size")
    data.add_argument("--num_workers", type=int, default=min(2, os.cpu_count() or 1),
                      help="image-decoding worker processes")
    data.add_argument("--seed", type=int, default=42, help="seeds the split, initialisation and shuffling")
    data.add_argument("--split_file", type=str, default=None,
                      help="reuse the val/test images of a run's split.json (default for --test_only: the one "
                           "beside the checkpoint's run folder)")
    data.add_argument("--strict_data", action="store_true", help="fail on unusable files instead of skipping them")
    data.add_argument("--cache_dir", type=str, default=None,
                      help=f"feature caches and extracted archives (default {default_cache_dir()})")
    data.add_argument("--no_feature_cache", action="store_true",
                      help="run the frozen backbone on every image every epoch instead of caching its output")

    model = parser.add_argument_group("model")
    model.add_argument("--recipe", type=str, default=None, choices=sorted(RECIPES),
                       help=f"{DEFAULT_RECIPE.name} (the default; with --resume: the run's own recipe): "
                            f"{DEFAULT_RECIPE.summary}; {NOTEBOOK_RECIPE.name}: {NOTEBOOK_RECIPE.summary}. Flags "
                            f"whose help says 'recipe' override single values")
    model.add_argument("--backbone_weights", type=str, default="imagenet",
                       help="imagenet | PATH to a vgg16().features or vgg16() state dict | none (random)")
    model.add_argument("--lr", type=float, default=None, help=f"learning rate ({_recipe_values('lr')})")
    model.add_argument("--weight_decay", type=float, default=None,
                       help=f"weight decay on the kernels; the notebook's 0.002 on its hidden kernels is Keras' "
                            f"l2(0.001) ({_recipe_values('weight_decay')})")
    data.add_argument("--batch_size", type=int, default=None,
                      help=f"batch size per device ({_recipe_values('batch_size')})")

    trainer = parser.add_argument_group("trainer")
    trainer.add_argument("--max_epochs", type=int, default=None, help=f"({_recipe_values('max_epochs')})")
    trainer.add_argument("--patience", type=int, default=None,
                         help=f"EarlyStopping patience on val_loss; None = off, all epochs run "
                              f"({_recipe_values('patience')})")
    trainer.add_argument("--accelerator", type=str, default="auto", choices=ACCELERATORS)
    trainer.add_argument("--devices", type=str, default="auto", help="number of devices, a list, or auto")
    trainer.add_argument("--strategy", type=str, default="auto", help="auto, ddp, ddp_spawn, ...")
    trainer.add_argument("--num_nodes", type=int, default=1)
    trainer.add_argument("--precision", type=str, default="auto", choices=PRECISION_CHOICES,
                         help="auto = bf16-mixed where the CPU/GPU runs bf16 natively, else 32-true (16-mixed on "
                              "GPUs without bf16)")
    trainer.add_argument("--default_root_dir", type=str, default=".",
                         help="runs are written to DEFAULT_ROOT_DIR/lightning_logs/version_N")
    trainer.add_argument("--fast_dev_run", action="store_true", help="one batch of each split, for a smoke test")
    trainer.add_argument("--limit_train_batches", type=float, default=1.0, help="fraction or number of batches")

    run = parser.add_argument_group("run")
    run.add_argument("--ckpt_path", type=str, default=None, help="checkpoint for --test_only or --resume")
    run.add_argument("--test_only", action="store_true", help="only test --ckpt_path on the run's test split")
    run.add_argument("--resume", action="store_true",
                     help="continue the latest run in DEFAULT_ROOT_DIR (or --ckpt_path) from its last.ckpt")
    run.add_argument("--metrics_json", type=str, default=None, help="with --test_only: also write metrics here")
    run.add_argument("--debug", action="store_true", help=f"show full tracebacks (same as {DEBUG_ENV}=1)")
    run.add_argument("--kill_at", type=str, default=None, help=argparse.SUPPRESS)  # EPOCH:BATCH, for crash tests
    return parser


def _parse_devices(value: str):
    if value == "auto":
        return "auto"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"\d+(,\d+)*,?", value):
        return [int(v) for v in value.split(",") if v]
    raise UserError(f"--devices {value!r} is not a number, a comma-separated list or auto")


def _check_writable(folder: Path) -> None:
    """Fail before any work if run files could not be written (rather than after an hour of training)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --default_root_dir {folder} ({err.strerror or err}); choose a writable "
                        f"folder") from None


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill the flags left unset from the recipe (explicit flags win).

    The recipe is ``--recipe``, else, for ``--resume``, the one the run was started with (runs from before recipes
    existed were the notebook's), else the default.
    """
    if args.recipe is None:
        args.recipe = DEFAULT_RECIPE.name
        if args.resume and args.resume_from is not None:
            config_file = args.resume_from.parent.parent / CONFIG_FILE_NAME
            if config_file.is_file():
                args.recipe = json.loads(config_file.read_text()).get("recipe", NOTEBOOK_RECIPE.name)
    recipe = RECIPES[args.recipe]
    for name in ("lr", "weight_decay", "batch_size", "max_epochs", "patience"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, name))


def validate_args(args: argparse.Namespace) -> None:
    """Check every flag before any work starts; raise :class:`UserError` with a one-line fix."""
    args.resume_from = None
    if args.resume:
        args.resume_from = Path(args.ckpt_path) if args.ckpt_path else _latest_last_checkpoint(
            Path(args.default_root_dir))
        if args.resume_from is None:
            raise UserError(f"--resume: no lightning_logs/version_*/checkpoints/last.ckpt under "
                            f"{args.default_root_dir}")
    apply_recipe(args)
    positive = {"batch_size": args.batch_size, "max_epochs": args.max_epochs, "num_nodes": args.num_nodes}
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"--{name} must be at least 1 (got {value})")
    if args.image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image_size must be at least {MIN_IMAGE_SIZE}: VGG16 halves it five times (got "
                        f"{args.image_size})")
    if (args.patience is not None and args.patience < 0) or args.num_workers < 0:
        raise UserError("--patience and --num_workers cannot be negative")
    if not args.lr > 0:
        raise UserError(f"--lr must be positive (got {args.lr})")
    if args.weight_decay < 0:
        raise UserError(f"--weight_decay cannot be negative (got {args.weight_decay})")
    devices = _parse_devices(args.devices)
    device_type = device_type_for(args.accelerator)
    if device_type == "cuda":
        available = torch.cuda.device_count()
        if available == 0:
            raise UserError("--accelerator gpu but no CUDA GPU is visible; use --accelerator cpu or auto")
    else:
        available = os.cpu_count() or 1
    wanted = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, list) else 1)
    if isinstance(devices, int) and devices == 0 or isinstance(devices, int) and devices < -1:
        raise UserError(f"--devices must be a positive number, a list, -1 or auto (got {args.devices})")
    if wanted > available:
        raise UserError(f"--devices {args.devices} asks for more {device_type.upper()} devices than the "
                        f"{available} available")
    args.devices = devices
    if args.test_only and not args.ckpt_path:
        raise UserError("--test_only needs --ckpt_path PATH (a .ckpt written by a training run)")
    if args.ckpt_path and not Path(args.ckpt_path).is_file():
        raise UserError(f"--ckpt_path {args.ckpt_path} does not exist")
    if args.split_file and not Path(args.split_file).is_file():
        raise UserError(f"--split_file {args.split_file} does not exist")
    if args.data_dir is None:
        raise UserError("no dataset given: pass --data_dir PATH (a UTKFace folder or UTKFace.tar.gz)")
    if not Path(args.data_dir).expanduser().exists():
        raise UserError(f"--data_dir {args.data_dir} does not exist; pass a UTKFace folder or UTKFace.tar.gz")
    weights = args.backbone_weights
    if weights not in ("imagenet", "none") and not Path(weights).expanduser().is_file():
        raise UserError(f"--backbone_weights {weights}: no such file (use imagenet, none or a path to a "
                        f"vgg16().features state dict)")
    _check_writable(Path(args.default_root_dir))
    args.precision = resolve_precision(args.precision, device_type)
    args.device_type = device_type


# ------------------------------------------------------------------------------------------ building blocks


def run_folder(trainer: pl.Trainer) -> Path:
    """The run's folder (``lightning_logs/version_N``; ``default_root_dir`` when logging is off, as in
    ``--fast_dev_run``). ``trainer.log_dir`` is a collective call under DDP: every rank must make it."""
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir)


class EpochSeeding(Callback):
    """Reseed every epoch from (seed, epoch): a run resumed from an epoch's checkpoint then draws exactly the
    same shuffles and dropout masks as an uninterrupted run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl.seed_everything(self.seed + 1000 * trainer.current_epoch + trainer.global_rank, workers=True,
                           verbose=False)


class FastTrainingAllocator(Callback):
    """glibc keeps freed memory for reuse during the training loop only (see :mod:`project.runtime`)."""

    def on_train_start(self, trainer, pl_module) -> None:
        keep_freed_memory()

    def on_train_end(self, trainer, pl_module) -> None:
        release_freed_memory()

    def on_exception(self, trainer, pl_module, exception) -> None:
        release_freed_memory()


class KillAt(Callback):
    """Test hook: SIGKILL this process at ``EPOCH:BATCH`` (proves that ``--resume`` loses nothing)."""

    def __init__(self, spec: str) -> None:
        self.epoch, self.batch = (int(v) for v in spec.split(":"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class RunFiles(Callback):
    """Writes the split, the skipped-file list and the run's configuration into the run folder (rank 0 only)."""

    def __init__(self, config: Dict) -> None:
        self.config = config

    def on_fit_start(self, trainer, pl_module) -> None:
        run_dir = run_folder(trainer)
        if not trainer.is_global_zero:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        datamodule.save_split(run_dir / SPLIT_FILE_NAME)
        datamodule.save_skipped(run_dir / SKIPPED_FILE_NAME)
        write_json_atomic(run_dir / CONFIG_FILE_NAME, json.loads(json.dumps(self.config, default=str)))


def build_datamodule(args: argparse.Namespace, model: LitClassifier, split_file: Optional[Path]) -> UTKFaceDataModule:
    """The DataModule for ``args``, serving cached features unless ``--no_feature_cache``."""
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    mirror = bool(model.hparams.mirror)
    datamodule = UTKFaceDataModule(
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        image_size=model.hparams.image_size,
        seed=args.seed,
        num_workers=args.num_workers,
        cache_dir=cache_dir,
        split_file=split_file,
        strict_data=args.strict_data,
        mirror=mirror,
    )
    if not args.no_feature_cache:
        builders = [
            FeatureCacheBuilder(model.backbone, model.hparams.image_size, args.precision, cache_dir / "features",
                                batch_size=max(args.batch_size, 32), num_workers=args.num_workers, mirrored=mirrored)
            for mirrored in ((False, True) if mirror else (False,))
        ]
        datamodule.use_feature_cache(*builders)
    return datamodule


def build_trainer(args: argparse.Namespace, callbacks: List[Callback], logger) -> pl.Trainer:
    """A Trainer from the flags (deterministic on CPU, where it costs nothing measurable)."""
    # A cached epoch is ~600 steps of ~50 ms: redrawing the bar every step costs seconds per epoch (and megabytes
    # of log when stderr is a file), so redraw a few times a second on a terminal and rarely in a log.
    progress = TQDMProgressBar(refresh_rate=5 if sys.stderr.isatty() else 100)
    return pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator=args.accelerator if args.accelerator != "cuda" else "gpu",
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        default_root_dir=args.default_root_dir,
        callbacks=[*callbacks, progress],
        logger=logger,
        deterministic=args.device_type == "cpu",
        fast_dev_run=args.fast_dev_run,
        limit_train_batches=_batches_or_fraction(args.limit_train_batches),
        log_every_n_steps=10,
    )


def _batches_or_fraction(value: float):
    """Lightning reads a float as a fraction of the batches and an int as a count: ``10`` means 10 batches."""
    if value == 1.0:
        return None
    return int(value) if value > 1 and float(value).is_integer() else value


def _latest_last_checkpoint(root: Path) -> Optional[Path]:
    candidates = sorted(
        root.glob("lightning_logs/version_*/checkpoints/last.ckpt"),
        key=lambda p: int(p.parent.parent.name.split("_")[-1]),
    )
    return candidates[-1] if candidates else None


def _metrics_payload(model: LitClassifier, results: Dict, extra: Dict) -> Dict:
    payload = {key: float(value) for key, value in results.items()}
    payload.update(model.test_results)
    payload.update(extra)
    return payload


def write_plots(run_dir: Path, datamodule: UTKFaceDataModule, model: LitClassifier, metrics: Dict) -> None:
    """The run's figures (``run_dir/plots``); a failure here is reported but never fails a finished run."""
    try:
        from project.plots import write_run_plots

        write_run_plots(run_dir, datamodule, model, metrics)
    except Exception as err:  # noqa: BLE001 - plots are a bonus on top of the saved metrics
        logging.getLogger(__name__).warning("plots skipped (%s: %s)", type(err).__name__, err)


def model_arguments(args: argparse.Namespace) -> Dict:
    """The :class:`LitClassifier` arguments of this fit: the recipe's and the flags', except that a resumed run keeps
    the model its checkpoint holds (a run started by an earlier release, say with one head where the recipe now
    trains three, resumes with one head; keys it lacks take the constructor defaults, as its checkpoint does)."""
    recipe = RECIPES[args.recipe]
    arguments = {**recipe.model_kwargs(), "image_size": args.image_size, "backbone_weights": args.backbone_weights,
                 "lr": args.lr, "weight_decay": args.weight_decay}
    if args.resume_from is None:
        return arguments
    try:
        saved = torch.load(args.resume_from, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]
    except Exception as err:  # noqa: BLE001 - explained in one line
        raise UserError(f"--resume: cannot read {args.resume_from} safely (weights_only): {first_line(err)}") from None
    defaults = inspect.signature(LitClassifier.__init__).parameters
    for name in recipe.model_kwargs():
        if name not in ("lr", "weight_decay"):  # the flags (or the recipe) decide these, as for a new run
            arguments[name] = saved.get(name, defaults[name].default)
    config_file = args.resume_from.parent.parent / CONFIG_FILE_NAME
    planned = json.loads(config_file.read_text()).get("max_epochs") if config_file.is_file() else None
    if arguments["schedule"] == "onecycle" and planned is not None and planned != args.max_epochs:
        raise UserError(f"--resume: this run's one-cycle learning-rate schedule was planned for {planned} epochs; "
                        f"resume with --max_epochs {planned}, or start a new run to train longer")
    return arguments


# ----------------------------------------------------------------------------------------------- commands


def run_fit(args: argparse.Namespace) -> Dict:
    """Fit with EarlyStopping + ModelCheckpoint, test the best checkpoint, write the run files."""
    started = time.time()
    root = Path(args.default_root_dir)
    resume_from: Optional[Path] = args.resume_from
    version = None
    if resume_from is not None:
        run_name = resume_from.parent.parent.name
        if run_name.startswith("version_"):
            version = int(run_name.split("_")[-1])
    pl.seed_everything(args.seed, workers=True, verbose=False)
    model = LitClassifier(**model_arguments(args))
    logger = CSVLogger(save_dir=str(root), name="lightning_logs", version=version)
    split_file = Path(args.split_file) if args.split_file else None
    if resume_from is not None and split_file is None:
        previous_split = resume_from.parent.parent / SPLIT_FILE_NAME
        split_file = previous_split if previous_split.is_file() else None
    datamodule = build_datamodule(args, model, split_file)
    # No dirpath: Lightning puts checkpoints in the logger's run folder, decided on rank 0 and broadcast (DDP-safe).
    checkpoint = ModelCheckpoint(
        monitor="val_acc", mode="max", filename="best-epoch={epoch:02d}-val_acc={val_acc:.4f}",
        auto_insert_metric_name=False,
    )
    # Lightning >= 2.5 refreshes ``save_last`` only when the best checkpoint changed; resuming needs the state of
    # every epoch, so a second callback (after the best one, to carry its state) rewrites last.ckpt each epoch.
    last = ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    callbacks = [
        checkpoint,
        last,
        EpochSeeding(args.seed),
        RunFiles(vars(args)),
        FastTrainingAllocator(),
    ]
    if args.patience is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=args.patience))
    if args.kill_at:
        callbacks.append(KillAt(args.kill_at))
    trainer = build_trainer(args, callbacks, logger)
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                weights_only=True if resume_from else None)
    best = checkpoint.best_model_path or None
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best if best else None,
                           weights_only=True if best else None, verbose=True)[0]
    payload = _metrics_payload(model, results, {
        "checkpoint": best or "(fast_dev_run: no checkpoint)",
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs_trained": trainer.current_epoch,
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < args.max_epochs),
        "test_images": len(datamodule.split["test"]),
        "precision": args.precision,
        "feature_cache": str(datamodule.feature_cache.path) if datamodule.feature_cache else None,
        "wall_time_s": round(time.time() - started, 1),
    })
    run_dir = run_folder(trainer)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / METRICS_FILE_NAME, payload)
        write_plots(run_dir, datamodule, model, payload)
        print(f"\nBest checkpoint: {best or '-'}\nTest metrics:    {run_dir / METRICS_FILE_NAME}\n"
              f"Logs and plots:  {run_dir}")
    return payload


def run_test(args: argparse.Namespace) -> Dict:
    """Test a saved checkpoint on the test images of its run (from the run's split.json)."""
    ckpt = Path(args.ckpt_path)
    model = load_classifier(ckpt, map_location="cpu")
    split_file = Path(args.split_file) if args.split_file else ckpt.resolve().parent.parent / SPLIT_FILE_NAME
    if not split_file.is_file():
        warnings.warn(f"no {SPLIT_FILE_NAME} beside the checkpoint; re-deriving the split from --seed {args.seed}")
        split_file = None
    datamodule = build_datamodule(args, model, split_file)
    trainer = build_trainer(args, callbacks=[], logger=False)
    results = trainer.test(model, datamodule=datamodule, verbose=True)[0]
    payload = _metrics_payload(model, results, {
        "checkpoint": str(ckpt), "split_file": str(split_file) if split_file else None,
        "test_images": len(datamodule.split["test"]), "precision": args.precision,
    })
    if args.metrics_json and trainer.is_global_zero:
        write_json_atomic(Path(args.metrics_json), payload)
    return payload


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, validate and run; user errors end as one line and exit code 2."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The frozen VGG16 stays in eval mode on purpose (see FrozenVGG16Features); Lightning warns about it every fit.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    with exit_on_user_error(PROGRAM, debug=args.debug):
        validate_args(args)
        if args.test_only:
            run_test(args)
        else:
            run_fit(args)
    return 0
