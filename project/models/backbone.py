"""The frozen VGG16 convolutional base and where its weights come from.

``weights`` is one of:

* ``"imagenet"`` - torchvision's ImageNet weights (downloaded once into the torch hub cache);
* a path to a state dict of ``torchvision.models.vgg16().features`` (keys ``0.weight`` ... ``28.bias``) or of a
  whole ``vgg16()`` (keys ``features.0.weight`` ...), loaded with ``weights_only=True`` so no code can run;
* ``"none"`` - random initialisation, for tests.
"""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
from copy import deepcopy as copy_module
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from project.common.errors import UserError, first_line
from project.config.settings import FEATURE_LAYERS

#: Output channels of VGG16's conv base.
FEATURE_CHANNELS = 512
#: The five max-pool layers halve the size five times, so images smaller than 32 px give an empty map.
MIN_IMAGE_SIZE = 32

# Where the frozen conv base may be cut (``project.config.settings.FEATURE_LAYERS``). ``block5`` is the whole conv
# base (the notebook); ``block4`` stops after block 4's max pool and averages 2x2 cells, so the features keep the same
# 512 x S/32 x S/32 shape. Block 4 holds the finer texture (wrinkles, skin) that age depends on; block 5 is tuned
# to ImageNet's object classes. The fine-tuning cuts keep block 4's output at full resolution (``block4_full``,
# 512 x S/16 x S/16, four times the cache) so that a trainable copy of block 5 runs above it, or freeze nothing
# (``pixels``) so that every layer trains.
#: Index just past each cut in ``torchvision.models.vgg16().features``.
_BLOCK_END = {"pixels": 0, "block4": 24, "block4_full": 24, "block5": 31}
#: Cuts above which the rest of the conv base is trained (:func:`trained_layers`), not left out.
FINETUNED_CUTS = ("block4_full", "pixels")
#: Length of ``vgg16().features``.
CONV_BASE_LAYERS = 31


def layers_run(layer: str) -> int:
    """How many of ``vgg16().features``' layers a frozen base cut after ``layer`` runs (the rest are kept but
    unused)."""
    return _BLOCK_END[layer]


def trained_layers(layer: str) -> Optional[slice]:
    """The slice of ``vgg16().features`` that trains above a frozen base cut after ``layer`` (None: only heads)."""
    return slice(_BLOCK_END[layer], CONV_BASE_LAYERS) if layer in FINETUNED_CUTS else None


def feature_map_size(image_size: int) -> int:
    """Height (= width) of the conv-base output for a square ``image_size`` input (7 at 224 px)."""
    size = image_size
    for _ in range(5):
        size //= 2
    return size


def feature_shape(image_size: int, layer: str = "block5") -> tuple:
    """Shape ``(C, H, W)`` of the features a base cut after ``layer`` gives for one ``image_size`` image."""
    if layer == "pixels":
        return (3, image_size, image_size)
    side = feature_map_size(image_size)
    if layer == "block4_full":
        side = image_size // 16  # four max pools
    return (FEATURE_CHANNELS, side, side)


class FrozenVGG16Features(nn.Module):
    """VGG16's conv base with every parameter frozen and the module pinned to eval mode.

    ``train()`` is a no-op for this module, so Lightning switching the LightningModule to training mode cannot
    change it (VGG16 has no dropout or batch norm in the conv base, but a frozen part should never be in train mode).
    """

    def __init__(self, layer: str = "block5") -> None:
        super().__init__()
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown feature layer {layer!r}; choose one of {', '.join(FEATURE_LAYERS)}")
        #: where the frozen base ends (``FEATURE_LAYERS``)
        self.layer = layer
        # All of VGG16's conv layers are kept whatever the cut, so every weights file and checkpoint has one layout.
        self.layers = vgg16(weights=None).features
        for param in self.layers.parameters():
            param.requires_grad_(False)
        self.layers.eval()

    def train(self, mode: bool = True) -> "FrozenVGG16Features":  # noqa: D102 - see class docstring
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``N x 3 x S x S`` (ImageNet-normalised RGB) -> features of :meth:`feature_shape` each."""
        features = self.layers[:layers_run(self.layer)](images.contiguous(memory_format=torch.channels_last))
        if self.layer == "block4":
            features = F.avg_pool2d(features, 2)  # S/16 -> S/32: the same shape (and cache size) as block 5
        return features

    def drop_unused_layers(self) -> "FrozenVGG16Features":
        """Keep only the layers :meth:`forward` runs (a ``block4`` cut drops block 5): what a bundled model ships.

        Such a base still computes the same features, but its state dict no longer fits a full VGG16 checkpoint.
        """
        self.layers = self.layers[:layers_run(self.layer)]
        return self

    def feature_shape(self, image_size: int) -> tuple:
        """Shape ``(C, H, W)`` of the features of one ``image_size`` image."""
        return feature_shape(image_size, self.layer)

    def trainable_copy(self) -> Optional[nn.Sequential]:
        """A trainable copy of the layers above the cut (:func:`trained_layers`), with the base's (pretrained)
        weights; None where only heads train."""
        layers = trained_layers(self.layer)
        if layers is None:
            return None
        copy = copy_module(self.layers[layers])
        for param in copy.parameters():
            param.requires_grad_(True)
        return copy

    def digest(self) -> str:
        """A hash of the weights themselves (not of a file name)."""
        sha = hashlib.sha256()
        for name, tensor in self.layers.state_dict().items():
            sha.update(name.encode())
            sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return sha.hexdigest()[:16]

    def cache_identity(self) -> dict:
        """What makes the features what they are, for the feature-cache key: the weights and where the base is cut.

        The cut is left out for ``block5`` (the original configuration), so the caches made before it became an
        option keep their keys.
        """
        identity = {"backbone": self.digest()}
        if self.layer != "block5":
            identity["layer"] = self.layer
        return identity

    def load_pretrained(self, weights: str) -> "FrozenVGG16Features":
        """Load ``weights`` (see the module docstring) into the conv base; ``none`` keeps the random weights."""
        state = load_backbone_state_dict(weights)
        if state is not None:
            self.layers.load_state_dict(state)
        return self


def _safe_torch_load(path: Path) -> object:
    """``torch.load`` that never runs code from the file (``weights_only=True``), with one-line errors."""
    if not path.is_file():
        raise UserError(f"backbone weights file not found: {path} (use --backbone_weights imagenet|PATH|none)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refusing to load {path}: it is not a plain tensor state dict (weights_only load failed: "
            f"{first_line(err, 160)})"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise UserError(f"cannot read {path} as PyTorch weights ({first_line(err, 160)})") from None


def _features_state_dict(raw: object, source: str) -> Dict[str, torch.Tensor]:
    """Accept a ``vgg16().features`` or whole ``vgg16()`` state dict and return the conv-base part."""
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(f"{source} is not a state dict of tensors; expected vgg16().features.state_dict()")
    if any(k.startswith("features.") for k in raw):
        raw = {k[len("features."):]: v for k, v in raw.items() if k.startswith("features.")}
    expected = vgg16(weights=None).features.state_dict()
    missing = sorted(set(expected) - set(raw))
    unexpected = sorted(set(raw) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{source} is not a VGG16 conv-base state dict (missing keys {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, tensor in expected.items():
        if raw[key].shape != tensor.shape:
            raise UserError(
                f"{source}: {key} has shape {tuple(raw[key].shape)}, VGG16 needs {tuple(tensor.shape)}"
            )
    return {k: v.float() for k, v in raw.items()}


def load_imagenet_state_dict() -> Dict[str, torch.Tensor]:
    """torchvision's ImageNet VGG16 weights from the torch hub cache, downloading them if needed."""
    try:
        raw = torch.hub.load_state_dict_from_url(
            VGG16_Weights.IMAGENET1K_V1.url, progress=True, map_location="cpu", weights_only=True
        )
    except (urllib.error.URLError, OSError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"cannot download torchvision's VGG16 ImageNet weights ({reason}); offline, pass a local copy with "
            f"--backbone_weights PATH (a vgg16().features or vgg16() state dict)"
        ) from None
    return _features_state_dict(raw, "torchvision's VGG16 weights")


def load_backbone_state_dict(weights: str) -> Optional[Dict[str, torch.Tensor]]:
    """Resolve ``weights`` (``imagenet``, ``none`` or a path) to a conv-base state dict (``None`` for ``none``)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return load_imagenet_state_dict()
    path = Path(weights).expanduser()
    return _features_state_dict(_safe_torch_load(path), str(path))


def build_backbone(weights: str = "imagenet", layer: str = "block5") -> FrozenVGG16Features:
    """A frozen VGG16 conv base with ``weights`` (see module docstring), cut after ``layer``."""
    return FrozenVGG16Features(layer).load_pretrained(weights)
