"""Reading checkpoints written by training: safely, without Lightning, in today's layout.

A checkpoint is Lightning's dict: ``state_dict`` (the LightningModule's ``net.*`` parameters), ``hyper_parameters``
(the network, optimizer and objective settings as plain dicts, see :func:`hyper_parameters`), ``temperature`` and
``age_calibration`` (the calibrations fitted on validation). Files are read with ``torch.load(weights_only=True)``:
a file that would need to unpickle objects is refused, and no code in it ever runs.

Checkpoints of release 0.1.0 (flat hyper-parameters; the LightningModule held ``backbone`` and ``head`` itself, one
head as a bare module or several as ``head.members.K``) are turned into today's layout on load by
:func:`upgrade_checkpoint`, so they keep loading, testing and resuming unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from project.common.errors import UserError, first_line
from project.config.settings import (
    InputSettings,
    NetSettings,
    ObjectiveSettings,
    OptimizerSettings,
)
from project.core.calibration import AgeCalibration, AgeEstimate, uncalibrated_ages
from project.models.net import AgeNet

#: ``hyper_parameters["format"]`` of the checkpoints this release writes (0.1.0 wrote flat ones, without it)
CHECKPOINT_FORMAT = 2
#: The LightningModule keeps its :class:`AgeNet` as ``net``: its parameters are saved under this prefix.
NET_PREFIX = "net."
TEMPERATURE_KEY = "temperature"
#: how the per-year outputs become an age and an interval (``project.core.calibration.AgeCalibration``), or None
AGE_CALIBRATION_KEY = "age_calibration"

MapLocation = Union[str, torch.device, None]


@dataclass(frozen=True)
class SavedSettings:
    """The settings a checkpoint was trained with."""

    net: NetSettings
    optimizer: OptimizerSettings
    objective: ObjectiveSettings


def hyper_parameters(net: NetSettings, optimizer: OptimizerSettings, objective: ObjectiveSettings) -> Dict:
    """What a checkpoint stores of its settings: plain types only, so it loads with ``weights_only=True``."""
    return {"format": CHECKPOINT_FORMAT, "net": net.to_dict(), "optimizer": optimizer.to_dict(),
            "objective": objective.to_dict()}


def saved_settings(hparams: Mapping[str, Any]) -> SavedSettings:
    """The settings in a checkpoint's (upgraded) ``hyper_parameters``."""
    return SavedSettings(NetSettings.from_dict(hparams["net"]), OptimizerSettings.from_dict(hparams["optimizer"]),
                         ObjectiveSettings(**hparams["objective"]))


def upgrade_checkpoint(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Turn a checkpoint of release 0.1.0 into today's layout, in place (today's are returned unchanged)."""
    flat = checkpoint["hyper_parameters"]
    if flat.get("format") == CHECKPOINT_FORMAT:
        return checkpoint
    net = NetSettings(
        input=InputSettings(image_size=flat["image_size"], feature_layer=flat["feature_layer"], mirror=flat["mirror"]),
        head=flat["head"], target=flat["target"], ensemble_size=flat["ensemble_size"],
        hidden_sizes=tuple(flat["hidden_sizes"]), dropout=flat["dropout"],
    )
    optimizer = OptimizerSettings(name=flat["optimizer"], lr=flat["lr"], weight_decay=flat["weight_decay"],
                                  schedule=flat["schedule"])
    objective = ObjectiveSettings(age_sigma=flat["age_sigma"], calibrate=flat["calibrate"])
    checkpoint["hyper_parameters"] = hyper_parameters(net, optimizer, objective)
    checkpoint["state_dict"] = {_upgraded_key(key, net.ensemble_size): value
                                for key, value in checkpoint["state_dict"].items()}
    # 0.1.0 reported groups only: a per-year model gets its median age, and no interval until one is fitted
    checkpoint[AGE_CALIBRATION_KEY] = uncalibrated_ages().to_dict() if net.target == "age" else None
    return checkpoint


def age_calibration_of(checkpoint: Mapping[str, Any]) -> Optional[AgeCalibration]:
    """The age calibration a checkpoint holds (None for a model without per-year outputs)."""
    record = checkpoint[AGE_CALIBRATION_KEY]
    return None if record is None else AgeCalibration.from_dict(record)


def _upgraded_key(key: str, ensemble_size: int) -> str:
    """0.1.0's parameter names in today's: ``backbone.*`` -> ``net.backbone.*``; ``head.*`` (one head) or
    ``head.members.K.*`` (several) -> ``net.heads.K.*``."""
    if key.startswith("head.members."):
        return NET_PREFIX + "heads." + key[len("head.members."):]
    if key.startswith("head.") and ensemble_size == 1:
        return NET_PREFIX + "heads.0." + key[len("head."):]
    return NET_PREFIX + key


def run_folder_of(checkpoint: Union[str, os.PathLike]) -> Path:
    """The run folder a checkpoint was written into (``version_N/checkpoints/x.ckpt`` -> ``version_N``), where its
    ``split.json`` and ``run_config.json`` are."""
    return Path(checkpoint).resolve().parent.parent


def read_checkpoint(path: Union[str, os.PathLike], map_location: MapLocation = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by training (``weights_only``), upgraded to today's layout.

    Every problem a user can cause (no such file, a truncated file, something that is not a checkpoint, a pickle
    that would need to run code) is a one-line :class:`UserError`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a .ckpt written by training")
    try:
        # mmap: only what is used is read (a training checkpoint also holds the optimizer's state)
        checkpoint = upgrade_checkpoint(torch.load(path, map_location=map_location, weights_only=True, mmap=True))
        float(checkpoint[TEMPERATURE_KEY])
        age_calibration_of(checkpoint)
        return checkpoint
    except Exception as err:  # noqa: BLE001 - every failure is explained in one line
        reason = f"missing {err}" if isinstance(err, KeyError) else first_line(err)
        raise UserError(f"cannot load checkpoint {path} safely (weights_only): {reason}") from None


@dataclass
class TrainedNet:
    """A trained network and its calibrations, ready for prediction (no Lightning needed)."""

    net: AgeNet
    #: divides the group logits so the probabilities are calibrated (1.0: uncalibrated)
    temperature: float
    #: how per-year outputs become an age and an interval (None: the network predicts groups only)
    age_calibration: Optional[AgeCalibration] = None
    #: which model this is, for every answer to name (a checkpoint's file, or the bundled model's name)
    name: str = "a network in memory"

    @property
    def settings(self) -> NetSettings:
        return self.net.settings

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the preprocessed images the network takes."""
        return self.net.settings.input.image_size

    @property
    def device(self) -> torch.device:
        return next(self.net.heads.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.heads.parameters()).dtype

    def calibrated_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``N x 3 x S x S`` -> calibrated group logits ``N x 5``."""
        return self.net(images) / self.temperature

    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[AgeEstimate]]:
        """Preprocessed images ``N x 3 x S x S`` -> calibrated group probabilities ``N x 5`` and, for a network
        with per-year outputs, the ages in years (with intervals when calibrated); else ``None``."""
        logits, years = self.net.predict(images)
        probabilities = torch.softmax((logits / self.temperature).float(), dim=1)
        if years is None or self.age_calibration is None:
            return probabilities, None
        return probabilities, self.age_calibration.estimate(years.cpu())


@dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint is, read without building its network (fast: for a server's ``/info``)."""

    settings: NetSettings
    temperature: float
    age_calibration: Optional[AgeCalibration]


def read_summary(path: Union[str, os.PathLike]) -> CheckpointSummary:
    """The settings, temperature and age calibration of a checkpoint (see :func:`read_checkpoint`)."""
    checkpoint = read_checkpoint(path)
    return CheckpointSummary(saved_settings(checkpoint["hyper_parameters"]).net, float(checkpoint[TEMPERATURE_KEY]),
                             age_calibration_of(checkpoint))


def load_trained_net(path: Union[str, os.PathLike], device: Optional[torch.device] = None) -> TrainedNet:
    """The network (on ``device``, in eval mode) and temperature of a checkpoint (see :func:`read_checkpoint`)."""
    checkpoint = read_checkpoint(path)
    settings = saved_settings(checkpoint["hyper_parameters"])
    with torch.device("meta"):  # no memory and no random init for weights the checkpoint replaces (VGG16's ~2 s)
        net = AgeNet(settings.net)
    # copies, not views of the memory-mapped file: a checkpoint rewritten in place later must not reach the model
    state = {key[len(NET_PREFIX):]: value.clone() for key, value in checkpoint["state_dict"].items()
             if key.startswith(NET_PREFIX)}
    try:
        net.load_state_dict(state, assign=True)  # strict: every parameter and buffer comes from the checkpoint
    except RuntimeError as err:
        raise UserError(f"cannot load checkpoint {path}: its weights do not fit its settings ({first_line(err)})"
                        ) from None
    if device is not None:
        net.to(device)
    return TrainedNet(net.eval(), float(checkpoint[TEMPERATURE_KEY]), age_calibration_of(checkpoint),
                      name=f"checkpoint {Path(path).name}")
