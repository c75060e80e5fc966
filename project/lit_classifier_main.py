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
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from project.age_groups import GROUP_LABELS, NUM_CLASSES
from project.models.backbone import FEATURE_CHANNELS, build_backbone, feature_shape
from project.models.head import AgeGroupHead

# True while ``load_from_checkpoint`` rebuilds a model: its weights come from the checkpoint, so the pretrained
# backbone weights named in the hyper-parameters must not be downloaded or read again.
_RESTORING_FROM_CHECKPOINT = contextvars.ContextVar("restoring_from_checkpoint", default=False)


class LitClassifier(pl.LightningModule):
    """A frozen ImageNet VGG16 conv base with the Keras notebook's dropout + L2 head, predicting 5 age groups.

    Args:
        image_size: input side in pixels; the head's input size follows it (7x7x512 at 224 px).
        backbone_weights: ``imagenet``, a path to VGG16 conv weights, or ``none`` (random, for tests).
        lr: Adam learning rate (the notebook's 1e-3).
        weight_decay: L2 on the two hidden kernels only. Keras ``l2(0.001)`` adds ``0.001 * sum(w**2)`` to the loss,
            whose gradient ``0.002 * w`` is exactly Adam's (coupled) ``weight_decay=0.002``.
        hidden_sizes, dropout: the head (1000 and 256 units, dropout 0.5 in the notebook).

    The batch may hold images (``N x 3 x S x S``) or cached conv-base features (``N x 512 x S/32 x S/32``); the
    channel count tells them apart, so the same checkpoint serves cached training and raw-image prediction.
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams.hidden_sizes = list(hidden_sizes)  # plain list: loads with weights_only=True
        self.backbone = build_backbone("none" if _RESTORING_FROM_CHECKPOINT.get() else backbone_weights)
        self.backbone.to(memory_format=torch.channels_last)  # ~40 % faster convolutions on CPU
        self.head = AgeGroupHead(math.prod(feature_shape(image_size)), hidden_sizes, dropout, num_classes)
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

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``N x 3 x S x S`` -> logits ``N x 5``."""
        with torch.no_grad():
            features = self.backbone(images)
        return self.head(features)

    def logits(self, batch_input: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images or of cached conv-base features."""
        if batch_input.dim() == 4 and batch_input.shape[1] == FEATURE_CHANNELS:
            return self.head(batch_input)
        return self(batch_input)

    # -- steps -----------------------------------------------------------------------------------------------
    def _shared_step(self, batch, split: str) -> torch.Tensor:
        inputs, targets = batch
        logits = self.logits(inputs)
        loss = self.criterion(logits, targets)
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
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.logits(inputs).float(), dim=1)

    def on_test_epoch_start(self) -> None:
        self.test_results = {}

    def on_test_epoch_end(self) -> None:
        recall = self.test_recall.compute()
        confusion = self.test_confusion.compute()
        for label, value in zip(GROUP_LABELS, recall):
            self.log(f"test_recall_{label}", value)
        self.test_results = {
            "recall": {label: float(v) for label, v in zip(GROUP_LABELS, recall)},
            "confusion_matrix": confusion.long().tolist(),
        }
        self.test_recall.reset()
        self.test_confusion.reset()

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        """Adam over the head only; weight decay on the hidden kernels, none on biases or the output layer."""
        decayed = list(self.head.regularized_weights())
        decayed_ids = {id(p) for p in decayed}
        others = [p for p in self.head.parameters() if id(p) not in decayed_ids]
        groups = [
            {"params": decayed, "weight_decay": self.hparams.weight_decay},
            {"params": others, "weight_decay": 0.0},
        ]
        # The fused kernel makes the per-step update of 25 M parameters a single pass over memory.
        return torch.optim.Adam(groups, lr=self.hparams.lr, fused=True)


def load_classifier(path, map_location=None) -> LitClassifier:
    """:meth:`LitClassifier.load_from_checkpoint` for user-given files: any failure becomes a one-line UserError.

    A missing or truncated file, something that is not a checkpoint, or a pickle that would need to run code
    (refused by ``weights_only=True``) all end in ``cannot load checkpoint PATH ...``.
    """
    from project.errors import UserError

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a .ckpt written by training")
    try:
        return LitClassifier.load_from_checkpoint(path, map_location=map_location)
    except Exception as err:  # noqa: BLE001 - every failure is explained in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot load checkpoint {path} safely (weights_only): {first}") from None


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see ``--help``)."""
    from project.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(cli_main())
