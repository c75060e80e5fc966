"""A training run from :class:`~project.config.settings.RunSettings`: fit, test the best checkpoint, write the run
files; or re-test a saved checkpoint. Small named steps in the style of torchvision's classification references.

    settings = ...                      # project.cli.train builds them from the flags (or tests, from the same parser)
    metrics = train(settings)           # the run folder's test_metrics.json payload
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger

from project.config.devices import lightning_accelerator
from project.config.settings import DataSettings, RunSettings
from project.data.datamodule import UTKFaceDataModule
from project.data.feature_cache import FeatureCacheBuilder
from project.models.backbone import build_backbone
from project.models.checkpoint import TrainedNet
from project.models.net import AgeNet
from project.models.quantized import Int8Features
from project.training import run_files
from project.training.callbacks import EpochSeeding, FastTrainingAllocator, RunFiles
from project.training.module import LitClassifier
from project.training.plots import write_run_plots

log = logging.getLogger(__name__)


def build_model(settings: RunSettings) -> LitClassifier:
    """A new model: the network with its pretrained backbone, and how to train it."""
    backbone = build_backbone(settings.backbone_weights, settings.net.input.feature_layer)
    return LitClassifier(AgeNet(settings.net, backbone), settings.optimizer, settings.objective)


def build_datamodule(data: DataSettings, net: AgeNet, precision: str) -> UTKFaceDataModule:
    """The DataModule of ``data`` for ``net``: the images the network's input settings ask for, or their cached
    backbone features (computed in ``precision``; ``int8``: by the backbone's int8 quantization, which the
    DataModule calibrates on training images) unless the cache is off or nothing is frozen (``--finetune all``)."""
    features = None
    data = replace(data, feature_cache=data.feature_cache and net.settings.input.cacheable)
    if data.feature_cache:
        encoder = Int8Features(net.backbone, data.cache_dir / "int8") if precision == "int8" else net.backbone
        features = FeatureCacheBuilder(encoder, precision, data.cache_dir / "features",
                                       batch_size=max(data.batch_size, 32), num_workers=data.num_workers)
    return UTKFaceDataModule(data, net.settings.input, features)


def build_trainer(settings: RunSettings, callbacks: Sequence[Callback], logger) -> pl.Trainer:
    """A Trainer from the settings (deterministic on CPU, where it costs nothing measurable)."""
    trainer = settings.trainer
    # A cached epoch is hundreds of short steps: redrawing the bar every step adds up to a noticeable cost per epoch
    # (and megabytes of log when stderr is a file), so redraw a few times a second on a terminal and rarely in a log.
    progress = TQDMProgressBar(refresh_rate=5 if sys.stderr.isatty() else 100)
    return pl.Trainer(
        max_epochs=trainer.max_epochs,
        accelerator=lightning_accelerator(trainer.accelerator),
        devices=trainer.devices,
        strategy=trainer.strategy,
        num_nodes=trainer.num_nodes,
        precision=trainer.precision,
        default_root_dir=trainer.default_root_dir,
        callbacks=[*callbacks, progress],
        logger=logger,
        deterministic=trainer.device_type == "cpu",
        fast_dev_run=trainer.fast_dev_run,
        limit_train_batches=_batches_or_fraction(trainer.limit_train_batches),
        log_every_n_steps=10,
    )


def _batches_or_fraction(value: float):
    """Lightning reads a float as a fraction of the batches and an int as a count: ``10`` means 10 batches."""
    if value == 1.0:
        return None
    return int(value) if value > 1 and float(value).is_integer() else value


def checkpoint_callbacks() -> Sequence[ModelCheckpoint]:
    """The best epoch by validation accuracy, and ``last.ckpt`` rewritten every epoch (for ``--resume``).

    Lightning >= 2.5 refreshes ``save_last`` only when the best checkpoint changed; resuming needs the state of
    every epoch, so a second callback (after the best one, to carry its state) rewrites last.ckpt each epoch.
    No dirpath: Lightning puts checkpoints in the logger's run folder, decided on rank 0 and broadcast (DDP-safe).
    """
    best = ModelCheckpoint(monitor="val_acc", mode="max", filename="best-epoch={epoch:02d}-val_acc={val_acc:.4f}",
                           auto_insert_metric_name=False)
    last = ModelCheckpoint(filename=Path(run_files.LAST_CHECKPOINT_NAME).stem, monitor=None, save_top_k=1,
                           enable_version_counter=False)
    return best, last


def train(settings: RunSettings, callbacks: Sequence[Callback] = ()) -> Dict:
    """Fit (or resume ``settings.resume_from``), test the best checkpoint, write the run files; returns the test
    metrics. ``callbacks`` are added to the run's own (tests use this to interrupt a run)."""
    started = time.time()
    resume_from = settings.resume_from
    pl.seed_everything(settings.data.seed, workers=True, verbose=False)
    model = build_model(settings)
    logger = CSVLogger(save_dir=str(settings.trainer.default_root_dir), name="lightning_logs",
                       version=run_files.version_of(resume_from) if resume_from else None)
    data = settings.data
    if resume_from is not None and data.split_file is None:
        data = replace(data, **run_files.split_settings_of(run_files.run_dir_of(resume_from)))
    datamodule = build_datamodule(data, model.net, settings.trainer.feature_precision)
    best, last = checkpoint_callbacks()
    own = [best, last, EpochSeeding(settings.data.seed), RunFiles(settings.record()), FastTrainingAllocator()]
    if settings.trainer.patience is not None:
        own.append(EarlyStopping(monitor="val_loss", mode="min", patience=settings.trainer.patience))
    trainer = build_trainer(settings, [*own, *callbacks], logger)
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                weights_only=True if resume_from else None)
    best_path = best.best_model_path or None
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best_path, weights_only=True if best_path else None,
                           verbose=True)[0]
    payload = _metrics_payload(model, results, {
        "checkpoint": best_path or "(fast_dev_run: no checkpoint)",
        "best_val_acc": float(best.best_model_score) if best.best_model_score is not None else None,
        "epochs_trained": trainer.current_epoch,
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < settings.trainer.max_epochs),
        "test_images": len(datamodule.split.indices["test"]),
        "split": datamodule.split.mode, "copies": datamodule.copies_summary(),
        "precision": settings.trainer.precision, "feature_precision": settings.trainer.feature_precision,
        "feature_cache": str(datamodule.caches["original"].path) if datamodule.caches else None,
        "wall_time_s": round(time.time() - started, 1),
    })
    run_dir = run_files.run_folder(trainer)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_file = run_files.write_metrics(run_dir / run_files.METRICS_FILE_NAME, payload)
        write_plots(run_dir, datamodule, model, payload)
        copies = f"\nCopies:          {payload['copies']}" if payload["copies"] else ""
        print(f"\nBest checkpoint: {best_path or '-'}\nTest metrics:    {metrics_file}\nLogs and plots:  {run_dir}"
              f"{copies}")
    return payload


def retest(settings: RunSettings, checkpoint: Path, split_file: Optional[Path], metrics_json: Optional[Path] = None
         ) -> Dict:
    """Test a saved checkpoint on the test images of ``split_file`` (its run's split.json); returns the metrics
    and writes them to ``metrics_json`` too when given."""
    model = LitClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    # without a split file, the split is made again as the run made it (a run before 0.5.0 split file by file)
    data = replace(settings.data, **({"split_file": split_file} if split_file
                                     else run_files.split_settings_of(run_files.run_dir_of(checkpoint))))
    # the checkpoint's own input settings (image size, mirror images), whatever the flags' recipe says
    datamodule = build_datamodule(data, model.net, settings.trainer.feature_precision)
    trainer = build_trainer(settings, callbacks=[], logger=False)
    results = trainer.test(model, datamodule=datamodule, verbose=True)[0]
    payload = _metrics_payload(model, results, {
        "checkpoint": str(checkpoint), "split_file": str(split_file) if split_file else None,
        "test_images": len(datamodule.split.indices["test"]), "split": datamodule.split.mode,
        "precision": settings.trainer.precision, "feature_precision": settings.trainer.feature_precision,
    })
    if metrics_json is not None and trainer.is_global_zero:
        run_files.write_metrics(metrics_json, payload)
    return payload


def _metrics_payload(model: LitClassifier, results: Dict, extra: Dict) -> Dict:
    payload = {key: float(value) for key, value in results.items()}
    payload.update(model.test_results)
    payload.update(extra)
    return payload


def write_plots(run_dir: Path, datamodule: UTKFaceDataModule, model: LitClassifier, metrics: Dict) -> None:
    """The run's figures (``run_dir/plots``); a failure here is reported but never fails a finished run."""
    try:
        write_run_plots(run_dir, datamodule, TrainedNet(model.net, model.temperature, model.age_calibration), metrics)
    except Exception as err:  # noqa: BLE001 - plots are a bonus on top of the saved metrics
        log.warning("plots skipped (%s: %s)", type(err).__name__, err)
