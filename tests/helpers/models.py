"""Small models for tests: a recipe's network at 32 px with a random backbone.

Building VGG16 draws random weights for its whole classifier too (over 100 M numbers, about a second), so tests
build one random conv base per cut and hand out copies.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace
from pathlib import Path

import torch

from project.config.recipes import Recipe
from project.models.backbone import FrozenVGG16Features
from project.models.net import AgeNet
from project.training.module import LitClassifier


@functools.lru_cache(maxsize=None)
def _random_backbone(layer: str) -> FrozenVGG16Features:
    torch.manual_seed(1234)
    return FrozenVGG16Features(layer)


def random_backbone(layer: str = "block5") -> FrozenVGG16Features:
    """A random VGG16 conv base cut after ``layer``: the same weights every call (a fresh copy each time)."""
    return copy.deepcopy(_random_backbone(layer))


def tiny_net(recipe: Recipe, image_size: int = 32, seed: int = 0, **overrides) -> AgeNet:
    """``recipe``'s network at ``image_size`` px: :func:`random_backbone`, heads drawn after ``manual_seed(seed)``."""
    settings = replace(recipe.net, input=replace(recipe.net.input, image_size=image_size), **overrides)
    backbone = random_backbone(settings.input.feature_layer)
    torch.manual_seed(seed)
    return AgeNet(settings, backbone)


def tiny_model(recipe: Recipe, image_size: int = 32, seed: int = 0, **overrides) -> LitClassifier:
    """A :class:`LitClassifier` around :func:`tiny_net`, trained as ``recipe`` says."""
    return LitClassifier(tiny_net(recipe, image_size, seed, **overrides), recipe.optimizer, recipe.objective)


def as_release_0_1_0(path: Path, target: Path) -> Path:
    """The same checkpoint as release 0.1.0 wrote it: flat hyper-parameters; the LightningModule held ``backbone``
    and ``head`` (one head bare, several as ``head.members.K``)."""
    checkpoint = torch.load(path, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    net, optimizer, objective = hparams["net"], hparams["optimizer"], hparams["objective"]
    checkpoint["hyper_parameters"] = {
        "image_size": net["input"]["image_size"], "backbone_weights": "none", "lr": optimizer["lr"],
        "weight_decay": optimizer["weight_decay"], "hidden_sizes": net["hidden_sizes"], "dropout": net["dropout"],
        "num_classes": 5, "feature_layer": net["input"]["feature_layer"], "mirror": net["input"]["mirror"],
        "head": net["head"], "target": net["target"], "age_sigma": objective["age_sigma"],
        "optimizer": optimizer["name"], "schedule": optimizer["schedule"], "ensemble_size": net["ensemble_size"],
        "calibrate": objective["calibrate"],
    }

    def old_name(key):
        key = key[len("net."):]
        if not key.startswith("heads."):
            return key
        _, index, rest = key.split(".", 2)
        return f"head.{rest}" if net["ensemble_size"] == 1 else f"head.members.{index}.{rest}"

    checkpoint["state_dict"] = {old_name(key): value for key, value in checkpoint["state_dict"].items()}
    torch.save(checkpoint, target)
    return target
