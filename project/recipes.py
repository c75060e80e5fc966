"""Training recipes: the faithful notebook port (the reference) and the improved default.

A recipe fixes everything that decides accuracy — which VGG16 layer the frozen features come from, the head, the
target, the optimizer and schedule, batch size and epochs — so the command line's ``--recipe`` reproduces the
numbers in README's accuracy table. Flags such as ``--lr`` or ``--max_epochs`` still override single values.
Both were measured on all of UTKFace over 3 seeds with ``benchmarks/accuracy.py``; the default was chosen on the
validation split only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class Recipe:
    """One way of training the head on the frozen VGG16 (see the module docstring)."""

    name: str
    summary: str
    #: ``block5`` (the whole conv base, as the notebook) or ``block4`` (see ``project.models.backbone``)
    feature_layer: str
    #: train on mirrored faces too and average the prediction of a face and its mirror image
    mirror: bool
    #: ``notebook`` (flatten -> 1000 -> 256) or ``compact`` (1x1 conv squeeze -> 512)
    head: str
    #: ``group`` (5 classes) or ``age`` (125 one-year bins with soft targets, summed into the 5 groups)
    target: str
    age_sigma: float
    #: heads trained side by side (different initialisation), their probabilities averaged; 1 = a single head
    ensemble_size: int
    #: fit a temperature on the validation split so the reported probabilities are calibrated (see calibration.py)
    calibrate: bool
    #: ``adam`` (L2 as coupled weight decay on the hidden kernels, as Keras' l2) or ``adamw``
    optimizer: str
    lr: float
    weight_decay: float
    #: ``constant`` or ``onecycle`` (warm-up then cosine decay over ``max_epochs``)
    schedule: str
    batch_size: int
    max_epochs: int
    #: EarlyStopping patience on val_loss; None trains all ``max_epochs`` (the schedule needs them)
    patience: Optional[int]

    def model_kwargs(self) -> Dict:
        """The :class:`~project.lit_classifier_main.LitClassifier` arguments this recipe sets."""
        fields = asdict(self)
        return {key: fields[key] for key in (
            "feature_layer", "mirror", "head", "target", "age_sigma", "ensemble_size", "calibrate", "optimizer",
            "lr", "weight_decay", "schedule",
        )}


NOTEBOOK = Recipe(
    name="notebook",
    summary="the Keras notebook, faithfully: block-5 features, flatten -> 1000 -> 256 head with dropout 0.5 and "
            "L2 0.001, Adam 1e-3, batch 32, early stopping on val_loss (patience 5)",
    feature_layer="block5",
    mirror=False,
    head="notebook",
    target="group",
    age_sigma=0.0,
    ensemble_size=1,
    calibrate=False,
    optimizer="adam",
    lr=1e-3,
    weight_decay=2e-3,
    schedule="constant",
    batch_size=32,
    max_epochs=50,
    patience=5,
)

DEFAULT = Recipe(
    name="default",
    summary="block-4 features of the face and its mirror image, three compact heads averaged, per-year soft age "
            "targets, AdamW with one-cycle cosine schedule, 20 epochs",
    feature_layer="block4",
    mirror=True,
    head="compact",
    target="age",
    age_sigma=3.0,
    ensemble_size=3,
    calibrate=True,
    optimizer="adamw",
    lr=1e-3,
    weight_decay=1e-2,
    schedule="onecycle",
    batch_size=64,
    max_epochs=20,
    patience=None,
)

RECIPES: Dict[str, Recipe] = {recipe.name: recipe for recipe in (DEFAULT, NOTEBOOK)}
