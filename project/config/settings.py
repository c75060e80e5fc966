"""Every setting of a run, in one place, as frozen dataclasses.

A :class:`~project.config.recipes.Recipe` holds the defaults of everything that decides accuracy; the command line's
flags override single values; the result is one :class:`RunSettings`, built once and handed down. Each value has exactly
one home: the network's shape in :class:`NetSettings` (whose :class:`InputSettings` - image size, feature layer,
mirror images, photo views - the data pipeline receives too), the optimizer in :class:`OptimizerSettings`, data
loading in :class:`DataSettings`, Lightning's Trainer in :class:`TrainerSettings`.

Checkpoints store :class:`NetSettings` and :class:`OptimizerSettings` as plain dicts (``to_dict``/``from_dict``), so
they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

#: Where the frozen VGG16 may be cut (see ``project.models.backbone``): ``block5`` and ``block4`` feed the heads
#: directly; above ``block4_full`` (block 4's full-resolution output) VGG16's block 5 is trained, and above ``pixels``
#: (nothing frozen: ``--finetune all``, GPUs only) every VGG16 layer is.
FEATURE_LAYERS = ("block5", "block4", "block4_full", "pixels")
#: ``notebook``: flatten -> 1000 -> 256 (the Keras notebook); ``compact``: 1x1 conv squeeze -> 512.
HEADS = ("notebook", "compact")
#: ``group``: 5 logits, cross-entropy; ``age``: 125 per-year logits with soft targets, summed into the 5 groups.
TARGETS = ("group", "age")
OPTIMIZERS = ("adam", "adamw")
#: ``constant`` or ``onecycle`` (10 % warm-up, then cosine decay over the whole run, stepped every batch).
SCHEDULES = ("constant", "onecycle")


def _check_choice(name: str, value: str, allowed: Tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


@dataclass(frozen=True)
class InputSettings:
    """What the network sees. The data pipeline, the feature cache and the network all receive this one object."""

    #: images are resized to ``image_size x image_size``; the head's input size follows it (7x7 features at 224 px)
    image_size: int
    #: where the frozen part of VGG16 ends and the cached features come from (``FEATURE_LAYERS``)
    feature_layer: str
    #: train on mirror images too and average the prediction of each face and its mirror image
    mirror: bool
    #: train on photo views too (``project.data.photo_views``: each face as if cut out of an ordinary photo); needs
    #: ``mirror``. Training only: evaluation and prediction see the images as they are.
    photo_views: bool = False

    def __post_init__(self) -> None:
        _check_choice("feature layer", self.feature_layer, FEATURE_LAYERS)
        if self.photo_views and not self.mirror:
            raise ValueError("photo views need mirror images (the default recipe)")

    @property
    def cacheable(self) -> bool:
        """Whether the frozen part's output can be cached: not where nothing is frozen (``pixels``)."""
        return self.feature_layer != "pixels"

    @property
    def views(self) -> int:
        """Views of each face that evaluation averages: the face (and its mirror image)."""
        return 2 if self.mirror else 1


@dataclass(frozen=True)
class NetSettings:
    """The network's shape: enough to rebuild it from a checkpoint."""

    input: InputSettings
    head: str
    target: str
    #: heads trained side by side from different random initialisations, their probabilities averaged
    ensemble_size: int
    #: the notebook head's hidden layers (unused by the compact head)
    hidden_sizes: Tuple[int, ...] = (1000, 256)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        _check_choice("head", self.head, HEADS)
        _check_choice("target", self.target, TARGETS)
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be at least 1, got {self.ensemble_size}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain types only (lists, not tuples), for checkpoints and ``hparams.yaml``."""
        record = asdict(self)
        record["hidden_sizes"] = list(self.hidden_sizes)
        if not self.input.photo_views:  # left out when off, so earlier releases still load these checkpoints
            del record["input"]["photo_views"]
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "NetSettings":
        fields = dict(record)
        fields["input"] = InputSettings(**fields["input"])
        fields["hidden_sizes"] = tuple(fields["hidden_sizes"])
        return cls(**fields)


@dataclass(frozen=True)
class OptimizerSettings:
    """How the heads (and the VGG16 layers a fine-tuning recipe trains) are optimized."""

    #: ``adam``: L2 as coupled weight decay on the kernels, as Keras' ``l2`` (the notebook); ``adamw``: decoupled
    name: str
    lr: float
    #: with ``adam`` on the notebook head, 0.002 on its two hidden kernels is Keras' ``l2(0.001)``
    weight_decay: float
    schedule: str
    #: the trained VGG16 layers' learning rate as a fraction of ``lr`` (the heads'): pretrained filters move slowly
    #: (discriminative learning rates); unused when only the heads train
    backbone_lr_factor: float = 0.1

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.name, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        if not 0 < self.backbone_lr_factor <= 1:
            raise ValueError(f"backbone_lr_factor must be in (0, 1], got {self.backbone_lr_factor}")

    def to_dict(self) -> Dict[str, Any]:
        record = asdict(self)
        if self.backbone_lr_factor == OptimizerSettings.backbone_lr_factor:  # left out at its default, so earlier
            del record["backbone_lr_factor"]                                  # releases still load these checkpoints
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "OptimizerSettings":
        return cls(**record)


@dataclass(frozen=True)
class ObjectiveSettings:
    """What training minimises and what validation fits, besides the network and the optimizer."""

    #: width (years) of the Gaussian soft per-year targets of the ``age`` target
    age_sigma: float
    #: fit a temperature on every validation pass (saved in the checkpoint, applied to test and prediction)
    calibrate: bool
    #: weight of the mean absolute error (years) of each head's expected age, added to the ``age`` target's loss
    #: (0: off; label-distribution learning with an expectation term, as in Gao et al. 2018, "DLDL-v2")
    expected_age_weight: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataSettings:
    """Where the images come from and how they are loaded (the DataModule's constructor)."""

    #: a UTKFace folder, ``UTKFace.tar.gz`` or a ``.csv`` / ``.tsv`` labels table
    data_dir: Path
    #: feature caches (``features/``) and extracted archives (``extracted/``)
    cache_dir: Path
    #: batch size per process
    batch_size: int
    #: seeds the split (the same seed gives the same test set) and the shuffles
    seed: int
    #: image-decoding worker processes (the cached features need none)
    num_workers: int
    #: a ``split.json`` whose validation and test images are used instead of a new split
    split_file: Optional[Path]
    #: fail on unusable files instead of skipping and reporting them
    strict_data: bool
    #: serve cached backbone features instead of images (the backbone then runs once per image, not every epoch)
    feature_cache: bool
    #: a new split's kind: ``grouped`` (copies of one photo on one side) or ``random`` (``project.data.split``)
    split: str = "grouped"
    #: what a grouped split does with copies whose ages disagree: ``drop``, ``median`` or ``keep``
    copy_labels: str = "drop"
    #: also keep each person's photos on one side: dlib descriptors closer than this distance (None: off)
    group_people: Optional[float] = None


#: Lightning's ``devices``: ``"auto"``, a count, or a list of device indices
Devices = Union[str, int, List[int]]


@dataclass(frozen=True)
class TrainerSettings:
    """Where and how Lightning's Trainer runs."""

    max_epochs: int
    #: EarlyStopping patience on ``val_loss``; ``None`` runs all ``max_epochs`` (a one-cycle schedule needs them)
    patience: Optional[int]
    accelerator: str
    devices: Devices
    strategy: str
    num_nodes: int
    #: a resolved precision of training: ``32-true``, ``bf16-mixed`` or ``16-mixed``
    precision: str
    #: ``cpu`` or ``cuda``
    device_type: str
    #: runs go to ``default_root_dir/lightning_logs/version_N``
    default_root_dir: Path
    fast_dev_run: bool
    #: the flag's value: a fraction of the training batches (up to 1.0), or a count of batches (above 1)
    limit_train_batches: float
    #: the precision the feature cache is computed and stored in: ``precision``, or ``int8``
    #: (``project.config.precision.FEATURE_ONLY``)
    feature_precision: str


@dataclass(frozen=True)
class RunSettings:
    """Everything a training run needs, built once from a recipe and the flags (``project.cli.train``)."""

    #: the recipe the defaults came from (``project.config.recipes``)
    recipe: str
    net: NetSettings
    optimizer: OptimizerSettings
    objective: ObjectiveSettings
    data: DataSettings
    trainer: TrainerSettings
    #: where the backbone's pretrained weights come from: ``imagenet``, a file, or ``none`` (random, for tests)
    backbone_weights: str
    #: the checkpoint a resumed run continues from
    resume_from: Optional[Path] = None

    def record(self) -> Dict[str, Any]:
        """The settings under their flag names, as JSON-ready values: the run folder's ``run_config.json``."""
        data, trainer, net_input = self.data, self.trainer, self.net.input
        return {
            "data_dir": str(data.data_dir), "image_size": net_input.image_size,
            "photo_views": net_input.photo_views, "num_workers": data.num_workers,
            "seed": data.seed, "split_file": _path_or_none(data.split_file), "strict_data": data.strict_data,
            "cache_dir": str(data.cache_dir), "no_feature_cache": not data.feature_cache, "recipe": self.recipe,
            "split": data.split, "copy_labels": data.copy_labels, "group_people": data.group_people,
            "backbone_weights": self.backbone_weights, "lr": self.optimizer.lr,
            "weight_decay": self.optimizer.weight_decay, "batch_size": data.batch_size,
            "max_epochs": trainer.max_epochs, "patience": trainer.patience, "accelerator": trainer.accelerator,
            "devices": trainer.devices, "strategy": trainer.strategy, "num_nodes": trainer.num_nodes,
            "precision": trainer.precision, "feature_precision": trainer.feature_precision,
            "default_root_dir": str(trainer.default_root_dir),
            "fast_dev_run": trainer.fast_dev_run, "limit_train_batches": trainer.limit_train_batches,
            "resume_from": _path_or_none(self.resume_from), "device_type": trainer.device_type,
        }


def _path_or_none(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)


def default_cache_dir() -> Path:
    """Where extracted archives and feature caches go when no ``--cache_dir`` is given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "age-group-classifier"
