"""LitClassifier: how an :class:`~project.models.net.AgeNet` is trained, validated, calibrated and tested."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torchmetrics import CatMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from project.common.errors import UserError
from project.config.recipes import RECIPES
from project.config.settings import ObjectiveSettings, OptimizerSettings
from project.core import calibration
from project.core.age_groups import GROUP_LABELS, NUM_CLASSES, age_distribution
from project.core.age_report import FaceResults, age_metrics, errors_by_age, slice_rows
from project.core.calibration import AgeCalibration, uncalibrated_ages
from project.models.backbone import build_backbone
from project.models.checkpoint import (
    AGE_CALIBRATION_KEY,
    TEMPERATURE_KEY,
    age_calibration_of,
    hyper_parameters,
    read_checkpoint,
    saved_settings,
    upgrade_checkpoint,
)
from project.models.net import AgeNet


@dataclass
class StepOutput:
    """What :meth:`LitClassifier.model_step` computes for one batch."""

    #: the group cross-entropy, logged as ``{split}_loss`` in every recipe (so the curves compare)
    loss: torch.Tensor
    #: group logits ``N x 5`` (heads, then views averaged; divided by the temperature when asked)
    logits: torch.Tensor
    targets: torch.Tensor
    #: every head's raw outputs ``(N * V) x heads x outputs`` (for the training objective)
    outputs: torch.Tensor
    #: views of each face in the batch (``V``)
    views: int


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(NUM_CLASSES, average="micro"),
        "f1": MulticlassF1Score(NUM_CLASSES, average="macro"),
    }, prefix=prefix)


class LitClassifier(pl.LightningModule):
    """Trains the heads of an :class:`AgeNet` (and the VGG16 layers above its frozen base where the recipe
    fine-tunes), fits the calibration, tests.

    Args:
        net: the network (``project.models.net``); a new one has its pretrained backbone loaded already.
        optimizer: the optimizer over the trainable parameters (``project.config.settings.OptimizerSettings``).
        objective: the per-year soft targets' width (and the expected-age term's weight) and whether to fit a
            temperature on validation.

    Batches are dicts from ``project.data``: ``features`` (cached, ``N x V x C x H x W``) or ``images``
    (``N x V x 3 x S x S``), ``group`` and ``age``; the key says which, and ``V`` is the number of views of each
    face. :meth:`forward` takes plain preprocessed images and returns calibrated group logits.

    With ``objective.calibrate``, a temperature is fitted on every validation pass (the one of the saved epoch goes
    into its checkpoint) and divides test and prediction logits, so probabilities match observed frequencies;
    validation itself stays raw, and no prediction changes (:mod:`project.core.calibration`). A network with per-year
    outputs also gets its age calibration (point estimate and interval) fitted there, and the test pass reports
    errors in years and per slice (:mod:`project.core.age_report`).
    """

    def __init__(self, net: AgeNet, optimizer: OptimizerSettings, objective: ObjectiveSettings) -> None:
        super().__init__()
        self.save_hyperparameters(hyper_parameters(net.settings, optimizer, objective))
        self.net = net
        self.optimizer_settings = optimizer
        self.objective_settings = objective
        self.criterion = nn.CrossEntropyLoss()
        self.train_metrics, self.val_metrics, self.test_metrics = (_metrics(f"{s}_") for s in ("train", "val", "test"))
        # Losses as weighted means over items, so they are exact across batches of unequal size and processes.
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.test_recall = MulticlassRecall(NUM_CLASSES, average=None)
        self.test_confusion = MulticlassConfusionMatrix(NUM_CLASSES)
        self.test_calibration = MulticlassCalibrationError(NUM_CLASSES, n_bins=15)
        #: divides the group logits of test and prediction; saved in checkpoints (1.0 = uncalibrated)
        self.temperature = 1.0
        #: how per-year outputs become an age and an interval (fitted on validation; None without per-year outputs)
        self.age_calibration: Optional[AgeCalibration] = uncalibrated_ages() if net.predicts_ages else None
        # The current validation pass's raw logits, labels, per-year probabilities and ages (gathered across
        # processes) to fit the calibrations on; and the test pass's per-face records for the error report.
        self.val_logits, self.val_targets = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        self.val_years, self.val_ages = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        self.test_records = CatMetric(nan_strategy="disable")
        #: recall, confusion matrix, calibration, ages and slices of the last test pass (see ``on_test_epoch_end``)
        self.test_results: Dict[str, Any] = {}

    @classmethod
    def from_recipe(cls, recipe: str = "default", backbone_weights: str = "imagenet", **net_input) -> "LitClassifier":
        """A new model as a recipe (``project.config.recipes``: ``default`` or ``notebook``) builds it, with the
        pretrained VGG16 of ``backbone_weights`` (``imagenet``: torchvision's download; or a local state dict file).

        ``net_input`` overrides the recipe's input settings, e.g. ``image_size=224`` or ``photo_views=True``.
        Train it for the recipe's ``max_epochs`` (its one-cycle schedule is planned over the Trainer's epochs).
        """
        if recipe not in RECIPES:
            raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
        chosen = RECIPES[recipe]
        settings = replace(chosen.net, input=replace(chosen.net.input, **net_input))
        backbone = build_backbone(backbone_weights, settings.input.feature_layer)
        return cls(AgeNet(settings, backbone), chosen.optimizer, chosen.objective)

    # -- checkpoints -----------------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Union[str, Path], map_location=None, strict: bool = True,
                             weights_only: bool = True) -> "LitClassifier":
        """Rebuild a model from a checkpoint alone: no network, no weights file, and no code run from the file.

        The file is read with ``weights_only=True`` (a checkpoint that would need to unpickle objects is refused;
        there is no way around it); anything wrong with it is a one-line :class:`~project.common.errors.UserError`.
        Checkpoints of release 0.1.0 load too (``project.models.checkpoint``).
        """
        if not weights_only:
            raise ValueError("checkpoints are only ever loaded with weights_only=True")
        checkpoint = read_checkpoint(checkpoint_path, map_location)
        saved = saved_settings(checkpoint["hyper_parameters"])
        model = cls(AgeNet(saved.net), saved.optimizer, saved.objective)
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"], strict=strict)
        device = next((t.device for t in checkpoint["state_dict"].values()), torch.device("cpu"))
        return model.to(device)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[TEMPERATURE_KEY] = float(self.temperature)
        checkpoint[AGE_CALIBRATION_KEY] = self.age_calibration.to_dict() if self.age_calibration else None

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Lightning loads the state dict after this hook (also when resuming or testing with ckpt_path).
        upgrade_checkpoint(checkpoint)
        self.temperature = float(checkpoint[TEMPERATURE_KEY])
        self.age_calibration = age_calibration_of(checkpoint)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``N x 3 x S x S`` -> calibrated group logits ``N x 5``."""
        return self.net(images) / self.temperature

    def model_step(self, batch: Mapping[str, torch.Tensor], calibrated: bool = False) -> StepOutput:
        """Group logits and loss of a batch, shared by the training, validation and test steps. ``calibrated``
        divides the logits by the temperature (test); validation fits the temperature on raw logits."""
        features = batch["features"] if "features" in batch else self.net.encode_views(batch["images"])
        logits, outputs = self.net.logits_and_outputs(features)
        if calibrated:
            logits = logits / self.temperature
        targets = batch["group"]
        return StepOutput(self.criterion(logits, targets), logits, targets, outputs, views=features.shape[1])

    def training_objective(self, step: StepOutput, ages: torch.Tensor) -> torch.Tensor:
        """What training minimises: every head's own loss, averaged over heads (each head learns alone, as if
        trained by itself), with per-year soft targets for the ``age`` target. A single head on the group target
        minimises the logged loss itself."""
        heads = len(self.net.heads)
        if self.net.settings.target != "age" and heads == 1:
            return step.loss
        targets, ages = step.targets.repeat_interleave(step.views), ages.repeat_interleave(step.views)
        per_head = self.net.member_group_logits(step.outputs)
        if self.net.settings.target != "age":
            return self.criterion(per_head.flatten(0, 1), targets.repeat_interleave(heads))
        group_loss = nn.functional.nll_loss(per_head.flatten(0, 1), targets.repeat_interleave(heads))  # log-probs
        # Per-year soft targets teach the age scale; the group term keeps the scored decision in the objective.
        soft_targets = age_distribution(ages, self.objective_settings.age_sigma).unsqueeze(1)
        log_years = torch.log_softmax(step.outputs.float(), dim=2)
        per_year = -(soft_targets * log_years).sum(dim=2).mean()
        weight = self.objective_settings.expected_age_weight
        if not weight:
            return per_year + group_loss
        years = torch.arange(log_years.shape[2], dtype=log_years.dtype, device=log_years.device)
        expected_age_error = ((log_years.exp() * years).sum(dim=2) - ages.unsqueeze(1).float()).abs().mean()
        return per_year + group_loss + weight * expected_age_error

    # -- steps -----------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        step = self.model_step(batch)
        objective = self.training_objective(step, batch["age"])
        if objective is not step.loss:
            self.log("train_objective", objective.detach(), on_step=False, on_epoch=True, batch_size=len(step.targets))
        self._log_split("train", step, self.train_metrics, self.train_loss)
        return objective

    def validation_step(self, batch, batch_idx):
        step = self.model_step(batch)  # raw: the temperature is fitted on these
        if self.objective_settings.calibrate:
            self.val_logits.update(step.logits.detach().float())
            self.val_targets.update(step.targets)
        if self.net.predicts_ages:
            self.val_years.update(self.net.year_probabilities(step.outputs.detach(), step.views))
            self.val_ages.update(batch["age"])
        self._log_split("val", step, self.val_metrics, self.val_loss)

    def test_step(self, batch, batch_idx):
        step = self.model_step(batch, calibrated=True)
        self._log_split("test", step, self.test_metrics, self.test_loss)
        self.test_recall.update(step.logits, step.targets)
        self.test_confusion.update(step.logits, step.targets)
        self.test_calibration.update(torch.softmax(step.logits.float(), dim=1), step.targets)
        self.test_records.update(self._records(batch, step))

    def _records(self, batch: Mapping[str, torch.Tensor], step: StepOutput) -> torch.Tensor:
        """One row per face: the columns of :class:`~project.core.age_report.FaceResults`, in order."""
        missing = torch.full((len(step.targets),), float("nan"))
        estimate = low = high = missing
        if self.net.predicts_ages:
            ages = self.age_calibration.estimate(self.net.year_probabilities(step.outputs.detach(), step.views).cpu())
            estimate = ages.age
            low, high = (ages.low, ages.high) if ages.low is not None else (missing, missing)
        columns = (batch["age"], step.targets, step.logits.argmax(dim=1), estimate, low, high, batch["gender"],
                   batch["ethnicity"])
        return torch.stack([column.detach().cpu().double() for column in columns], dim=1)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        """Calibrated group probabilities of a batch of preprocessed images (a tensor, or ``{"images": ...}``
        with views)."""
        if isinstance(batch, Mapping):
            return torch.softmax((self.net.forward_views(batch["images"]) / self.temperature).float(), dim=1)
        return torch.softmax(self.forward(batch).float(), dim=1)

    def _log_split(self, split: str, step: StepOutput, metrics: MetricCollection, mean_loss: MeanMetric) -> None:
        metrics.update(step.logits, step.targets)
        mean_loss.update(step.loss.detach(), weight=len(step.targets))
        on_bar = split != "train"
        self.log(f"{split}_loss", mean_loss, on_step=False, on_epoch=True, prog_bar=on_bar,
                 batch_size=len(step.targets))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=on_bar, batch_size=len(step.targets))

    # -- epoch ends ------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        """Fit the calibrations on this validation pass (runs before ModelCheckpoint saves the epoch)."""
        if self.objective_settings.calibrate:
            self._fit_temperature()
        if self.net.predicts_ages:
            self._fit_age_calibration()

    def _gathered(self, values: CatMetric, labels: CatMetric) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """This validation pass's ``N x ...`` values and ``N`` labels from every process, on the CPU (and both
        metrics reset); ``None`` in the sanity check or when there were none."""
        rows, targets = values.compute(), labels.compute()
        values.reset()
        labels.reset()
        if self.trainer.sanity_checking or not len(targets):
            return None
        return rows.view(len(targets), -1).cpu(), targets.cpu()

    def _fit_temperature(self) -> None:
        gathered = self._gathered(self.val_logits, self.val_targets)
        if gathered is None:
            return
        logits, targets = gathered
        if len(targets) < calibration.MIN_CALIBRATION_ITEMS and self.current_epoch == 0:
            rank_zero_info(f"only {len(targets)} validation images: probabilities stay uncalibrated "
                           f"(a temperature needs at least {calibration.MIN_CALIBRATION_ITEMS})")
        self.temperature = calibration.fit_temperature(logits, targets.long())
        self.log("val_temperature", self.temperature)

    def _fit_age_calibration(self) -> None:
        gathered = self._gathered(self.val_years, self.val_ages)
        if gathered is None:
            return
        years, ages = gathered
        self.age_calibration = calibration.fit_age_calibration(years, ages)
        estimate = calibration.point_estimate(years, self.age_calibration.point)
        self.log("val_mae", (estimate - ages.double()).abs().mean().item())
        if self.age_calibration.scale is not None:
            self.log("val_interval_scale", self.age_calibration.scale)

    def on_test_epoch_start(self) -> None:
        self.test_results = {}

    def on_test_epoch_end(self) -> None:
        recall = self.test_recall.compute()
        confusion = self.test_confusion.compute()
        self.log("test_calibration_error", float(self.test_calibration.compute()))
        for label, value in zip(GROUP_LABELS, recall):
            self.log(f"test_recall_{label}", value)
        records = FaceResults(*self.test_records.compute().view(-1, 8).double().cpu().numpy().T)
        ages = age_metrics(records)
        for name in ("mae", "median_absolute_error", "cs5", "interval_coverage", "interval_width"):
            if name in ages:
                self.log(f"test_{name}", ages[name])
        if ages:
            ages.update(self.age_calibration.to_dict(), by_age=errors_by_age(records))
        self.test_results = {
            "recall": {label: float(v) for label, v in zip(GROUP_LABELS, recall)},
            "confusion_matrix": confusion.long().tolist(),
            "temperature": float(self.temperature),
            "ages": ages or None,
            "slices": slice_rows(records),
        }
        for metric in (self.test_recall, self.test_confusion, self.test_calibration, self.test_records):
            metric.reset()

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        """The optimizer over the trainable parameters only (the frozen backbone is not in it), weight decay on
        kernels only.

        ``adam`` reproduces Keras' l2 (coupled decay on the notebook head's two hidden kernels); ``adamw`` decays
        every kernel. The VGG16 layers a fine-tuning recipe trains get ``lr * backbone_lr_factor`` (discriminative
        learning rates: the pretrained filters move slowly while the new heads settle). ``onecycle`` warms up for
        10 % of the steps and then follows a cosine down, every batch, in every group.
        """
        settings = self.optimizer_settings
        decayed = self.net.regularized_weights()
        decayed_ids = {id(p) for p in decayed}
        others = [p for p in self.net.heads.parameters() if id(p) not in decayed_ids]
        groups = [
            {"params": decayed, "weight_decay": settings.weight_decay, "lr": settings.lr},
            {"params": others, "weight_decay": 0.0, "lr": settings.lr},
        ]
        tuned = self.net.tuned_parameters()
        if tuned:
            tuned_lr = settings.lr * settings.backbone_lr_factor
            groups += [
                {"params": [p for p in tuned if p.ndim > 1], "weight_decay": settings.weight_decay, "lr": tuned_lr},
                {"params": [p for p in tuned if p.ndim <= 1], "weight_decay": 0.0, "lr": tuned_lr},
            ]
        # The fused kernel makes the per-step update of 25 M parameters a single pass over memory.
        optimizer_class = torch.optim.AdamW if settings.name == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(groups, lr=settings.lr, fused=True)
        if settings.schedule != "onecycle":
            return optimizer
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in groups],
            total_steps=max(1, int(self.trainer.estimated_stepping_batches)), pct_start=0.1,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
