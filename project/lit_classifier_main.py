"""Train and test the age-group classifier: ``LitClassifier`` and the command line (``cli_main``).

    python project/lit_classifier_main.py --data_dir path/to/UTKFace.tar.gz
    python project/lit_classifier_main.py --test_only --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt \
        --data_dir path/to/UTKFace.tar.gz
"""

from __future__ import annotations

import contextvars
import math
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make ``import project`` work without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

from project import calibration
from project.age_groups import AGE_BINS, GROUP_LABELS, NUM_CLASSES, age_distribution, group_log_probs
from project.models.backbone import FEATURE_CHANNELS, build_backbone, feature_shape
from project.models.head import AgeGroupHead, CompactAgeHead, HeadEnsemble
from project.transforms import mirror

HEADS = ("notebook", "compact")
TARGETS = ("group", "age")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "onecycle")

# True while ``load_from_checkpoint`` rebuilds a model: its weights come from the checkpoint, so the pretrained
# backbone weights named in the hyper-parameters must not be downloaded or read again.
_RESTORING_FROM_CHECKPOINT = contextvars.ContextVar("restoring_from_checkpoint", default=False)


class LitClassifier(pl.LightningModule):
    """A frozen ImageNet VGG16 conv base with a trainable head, predicting 5 age groups.

    The constructor's defaults build the Keras notebook's model (``project.recipes.NOTEBOOK``), so checkpoints from
    before recipes existed load unchanged; the command line's default recipe passes
    ``project.recipes.DEFAULT.model_kwargs()``.

    Args:
        image_size: input side in pixels; the head's input size follows it (7x7x512 at 224 px).
        backbone_weights: ``imagenet``, a path to VGG16 conv weights, or ``none`` (random, for tests).
        lr: learning rate (the notebook's Adam 1e-3).
        weight_decay: with ``adam``, L2 on the two hidden kernels only: Keras ``l2(0.001)`` adds
            ``0.001 * sum(w**2)`` to the loss, whose gradient ``0.002 * w`` is exactly Adam's (coupled)
            ``weight_decay=0.002``. With ``adamw``, decoupled decay on every kernel.
        hidden_sizes, dropout: the notebook head (1000 and 256 units, dropout 0.5).
        feature_layer: ``block5`` (the whole conv base) or ``block4`` (see ``project.models.backbone``).
        mirror: average the predictions of each face and its mirror image (and, with the cache, train on both).
        head: ``notebook`` (:class:`AgeGroupHead`) or ``compact`` (:class:`CompactAgeHead`).
        target: ``group`` (5 logits, cross-entropy) or ``age`` (125 per-year logits trained on soft targets of width
            ``age_sigma`` plus the group log-likelihood; the group probabilities are sums over years).
        optimizer: ``adam`` or ``adamw``; schedule: ``constant`` or ``onecycle`` (warm-up + cosine over the run).
        ensemble_size: how many heads (each with its own initialisation) train side by side on the same batches;
            the prediction averages their probabilities (:class:`HeadEnsemble`). 1 is a single head.
        calibrate: fit a temperature on every validation pass (the one of the saved epoch goes into its checkpoint)
            and divide test and prediction logits by it, so the probabilities match observed frequencies; no
            prediction changes (:mod:`project.calibration`).

    The batch may hold images (``N x 3 x S x S``), cached conv-base features (``N x 512 x S/32 x S/32``) or several
    views of them (``N x V x ...``, averaged); the shape tells them apart, so the same checkpoint serves cached
    training and raw-image prediction. :meth:`logits` always returns group logits.
    """

    def __init__(
        self,
        image_size: int = 224,
        backbone_weights: str = "imagenet",
        lr: float = 1e-3,
        weight_decay: float = 2e-3,
        hidden_sizes: Sequence[int] = (1000, 256),
        dropout: float = 0.5,
        num_classes: int = NUM_CLASSES,
        feature_layer: str = "block5",
        mirror: bool = False,
        head: str = "notebook",
        target: str = "group",
        age_sigma: float = 3.0,
        optimizer: str = "adam",
        schedule: str = "constant",
        ensemble_size: int = 1,
        calibrate: bool = False,
    ) -> None:
        super().__init__()
        for name, value, allowed in (("head", head, HEADS), ("target", target, TARGETS),
                                     ("optimizer", optimizer, OPTIMIZERS), ("schedule", schedule, SCHEDULES)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be at least 1, got {ensemble_size}")
        if target == "age" and num_classes != NUM_CLASSES:
            raise ValueError("the per-year age target is defined for the five 25-year groups only")
        self.save_hyperparameters()
        self.hparams.hidden_sizes = list(hidden_sizes)  # plain list: loads with weights_only=True
        weights = "none" if _RESTORING_FROM_CHECKPOINT.get() else backbone_weights
        self.backbone = build_backbone(weights, feature_layer)
        self.backbone.to(memory_format=torch.channels_last)  # ~40 % faster convolutions on CPU
        channels, side, _ = feature_shape(image_size)
        outputs = AGE_BINS if target == "age" else num_classes

        def new_head() -> nn.Module:
            if head == "compact":
                return CompactAgeHead(channels, side, outputs, dropout=dropout)
            return AgeGroupHead(channels * side * side, hidden_sizes, dropout, outputs)

        # A single head stays a bare module, so checkpoints from before ensembles keep their parameter names.
        self.head = new_head() if ensemble_size == 1 else HeadEnsemble([new_head() for _ in range(ensemble_size)])
        self.criterion = nn.CrossEntropyLoss()
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        # Losses as weighted means over items, so they are exact across batches of unequal size and processes.
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.test_recall = MulticlassRecall(num_classes, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_calibration = MulticlassCalibrationError(num_classes, n_bins=15)
        #: divides the group logits of test and prediction; saved in checkpoints (1.0 = uncalibrated)
        self.temperature = 1.0
        # Raw validation logits and labels of the current pass (gathered across processes) to fit the temperature.
        self.val_logits, self.val_targets = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        self.test_results: Dict[str, Any] = {}

    # -- restoring -------------------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: Optional[bool] = True, **kwargs):
        """Rebuild a model from a checkpoint alone: no network, no weights file, and no code run from the file.

        Loads with ``weights_only=True`` by default (a checkpoint that would need to unpickle objects is refused).
        """
        token = _RESTORING_FROM_CHECKPOINT.set(True)
        try:
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                                strict=strict, weights_only=weights_only, **kwargs)
        finally:
            _RESTORING_FROM_CHECKPOINT.reset(token)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["temperature"] = float(self.temperature)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Checkpoints from before calibration existed have none: they stay uncalibrated.
        self.temperature = float(checkpoint.get("temperature", 1.0))

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``N x 3 x S x S`` -> calibrated group logits ``N x 5`` (mirror-averaged when
        ``mirror``, divided by the fitted :attr:`temperature`)."""
        return self.logits(images) / self.temperature

    def logits(self, batch_input: torch.Tensor) -> torch.Tensor:
        """Group logits for a batch of images or cached features, ``N x ...`` or with views ``N x V x ...``.

        Views (a face and its mirror image) are averaged as probabilities; the result is then their log, which is
        a valid logit vector (its softmax gives the averaged probabilities back). With ``mirror``, a batch of images
        gets its mirror view here; cached features come with both views from the DataModule.
        """
        if self.hparams.mirror and batch_input.dim() == 4 and batch_input.shape[1] != FEATURE_CHANNELS:
            batch_input = torch.stack([batch_input, mirror(batch_input)], dim=1)
        if batch_input.dim() == 5:
            count, views = batch_input.shape[:2]
            per_view = self._group_logits(batch_input.flatten(0, 1)).view(count, views, -1)
            return torch.logsumexp(torch.log_softmax(per_view, dim=2), dim=1) - math.log(views)
        return self._group_logits(batch_input)

    def _outputs(self, batch_input: torch.Tensor) -> torch.Tensor:
        """Every head's raw outputs (5 group logits or 125 per-year logits), ``N x heads x outputs``."""
        if batch_input.shape[1] != FEATURE_CHANNELS:
            with torch.no_grad():
                batch_input = self.backbone(batch_input)
        outputs = self.head(batch_input)
        return outputs if outputs.dim() == 3 else outputs.unsqueeze(1)

    def _group_logits(self, batch_input: torch.Tensor) -> torch.Tensor:
        return self._as_group_logits(self._outputs(batch_input))

    def _per_head_group_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """``N x heads x outputs`` -> group logits of each head, ``N x heads x 5`` (per-year outputs become group
        log-probabilities)."""
        if self.hparams.target != "age":
            return outputs
        return group_log_probs(outputs.flatten(0, 1)).view(*outputs.shape[:2], -1)

    def _as_group_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The heads' outputs as one set of group logits: a single head's own, or the log of the heads' averaged
        probabilities."""
        per_head = self._per_head_group_logits(outputs)
        if per_head.shape[1] == 1:
            return per_head[:, 0]
        return torch.logsumexp(torch.log_softmax(per_head.float(), dim=2), dim=1) - math.log(per_head.shape[1])

    def _objective(self, outputs: torch.Tensor, targets: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        """What training minimises: every head's own loss, averaged over heads (each head learns alone)."""
        per_head = self._per_head_group_logits(outputs)
        heads = per_head.shape[1]
        if self.hparams.target != "age":
            return self.criterion(per_head.flatten(0, 1), targets.repeat_interleave(heads))
        group_loss = nn.functional.nll_loss(per_head.flatten(0, 1), targets.repeat_interleave(heads))  # log-probs
        # Per-year soft targets teach the age scale; the group term keeps the scored decision in the objective.
        soft_targets = age_distribution(ages, self.hparams.age_sigma).unsqueeze(1)
        per_year = -(soft_targets * torch.log_softmax(outputs.float(), dim=2)).sum(dim=2).mean()
        return per_year + group_loss

    # -- steps -----------------------------------------------------------------------------------------------
    def _shared_step(self, batch, split: str) -> torch.Tensor:
        inputs, targets, ages = batch
        if split == "train":
            outputs = self._outputs(inputs)
            logits = self._as_group_logits(outputs)
        elif split == "val":
            logits = self.logits(inputs)  # raw: the temperature is fitted on these
            if self.hparams.calibrate:
                self.val_logits.update(logits.detach().float())
                self.val_targets.update(targets)
        else:
            logits = self.forward(inputs)
        # The logged loss is the group cross-entropy in every split and recipe, so the curves compare.
        loss = self.criterion(logits, targets)
        objective = loss
        if split == "train" and (self.hparams.target == "age" or outputs.shape[1] > 1):
            objective = self._objective(outputs, targets, ages)
            self.log("train_objective", objective.detach(), on_step=False, on_epoch=True, batch_size=len(targets))
        metrics = getattr(self, f"{split}_metrics")
        metrics.update(logits, targets)
        mean_loss = getattr(self, f"{split}_loss")
        mean_loss.update(loss.detach(), weight=len(targets))
        on_bar = split != "train"
        self.log(f"{split}_loss", mean_loss, on_step=False, on_epoch=True, prog_bar=on_bar,
                 batch_size=len(targets))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=on_bar, batch_size=len(targets))
        if split == "test":
            self.test_recall.update(logits, targets)
            self.test_confusion.update(logits, targets)
            self.test_calibration.update(torch.softmax(logits.float(), dim=1), targets)
        return objective

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.forward(inputs).float(), dim=1)

    def on_validation_epoch_end(self) -> None:
        """Fit the temperature on this pass's raw validation logits (runs before ModelCheckpoint saves the epoch)."""
        if not self.hparams.calibrate:
            return
        logits, targets = self.val_logits.compute(), self.val_targets.compute()
        self.val_logits.reset()
        self.val_targets.reset()
        if self.trainer.sanity_checking or not len(targets):
            return
        if len(targets) < calibration.MIN_CALIBRATION_ITEMS and self.current_epoch == 0:
            rank_zero_info(f"only {len(targets)} validation images: probabilities stay uncalibrated "
                           f"(a temperature needs at least {calibration.MIN_CALIBRATION_ITEMS})")
        self.temperature = calibration.fit_temperature(logits.view(len(targets), -1).cpu(), targets.long().cpu())
        self.log("val_temperature", self.temperature)

    def on_test_epoch_start(self) -> None:
        self.test_results = {}

    def on_test_epoch_end(self) -> None:
        recall = self.test_recall.compute()
        confusion = self.test_confusion.compute()
        calibration_error = float(self.test_calibration.compute())
        self.log("test_calibration_error", calibration_error)
        for label, value in zip(GROUP_LABELS, recall):
            self.log(f"test_recall_{label}", value)
        self.test_results = {
            "recall": {label: float(v) for label, v in zip(GROUP_LABELS, recall)},
            "confusion_matrix": confusion.long().tolist(),
            "temperature": float(self.temperature),
        }
        self.test_recall.reset()
        self.test_confusion.reset()
        self.test_calibration.reset()

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        """The optimizer over the head only (the backbone is frozen), weight decay on kernels only.

        ``adam`` reproduces Keras' l2 (coupled decay on the two hidden kernels); ``adamw`` decays every kernel.
        ``onecycle`` warms up for 10 % of the steps and then follows a cosine down, stepping every batch.
        """
        decayed = list(self.head.regularized_weights())
        decayed_ids = {id(p) for p in decayed}
        others = [p for p in self.head.parameters() if id(p) not in decayed_ids]
        groups = [
            {"params": decayed, "weight_decay": self.hparams.weight_decay},
            {"params": others, "weight_decay": 0.0},
        ]
        # The fused kernel makes the per-step update of 25 M parameters a single pass over memory.
        optimizer_class = torch.optim.AdamW if self.hparams.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(groups, lr=self.hparams.lr, fused=True)
        if self.hparams.schedule != "onecycle":
            return optimizer
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=max(1, int(self.trainer.estimated_stepping_batches)),
            pct_start=0.1,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def load_classifier(path, map_location=None) -> LitClassifier:
    """:meth:`LitClassifier.load_from_checkpoint` for user-given files: any failure becomes a one-line UserError.

    A missing or truncated file, something that is not a checkpoint, or a pickle that would need to run code
    (refused by ``weights_only=True``) all end in ``cannot load checkpoint PATH ...``.
    """
    from project.errors import UserError, first_line

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a .ckpt written by training")
    try:
        return LitClassifier.load_from_checkpoint(path, map_location=map_location)
    except Exception as err:  # noqa: BLE001 - every failure is explained in one line
        raise UserError(f"cannot load checkpoint {path} safely (weights_only): {first_line(err)}") from None


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see ``--help``)."""
    from project.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(cli_main())
