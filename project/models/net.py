"""AgeNet: the frozen VGG16 conv base, the trainable heads, and the map from their outputs to age-group logits.

Each entry point takes one kind of input, so nothing guesses what a tensor holds from its shape:

* :meth:`AgeNet.forward` - preprocessed images ``N x 3 x S x S`` -> group logits ``N x 5`` (with
  ``input.mirror``, the logits of each face and its mirror image, averaged);
* :meth:`AgeNet.forward_views` - views of each face ``N x V x 3 x S x S`` -> group logits ``N x 5``;
* :meth:`AgeNet.forward_features` - backbone features ``N x V x C x H x W`` (cached, say) -> group logits ``N x 5``;
* :meth:`AgeNet.logits_and_outputs` - the same, plus every head's raw outputs (what training needs), and the
  steps in between (:meth:`AgeNet.views`, :meth:`AgeNet.encode`, :meth:`AgeNet.head_outputs`, ...).

Group logits are log-probabilities up to a constant: averaging views or heads averages their probabilities and
returns the log of the mean, whose softmax gives the averaged probabilities back. The temperature that calibrates
them lives with the trained model (``project.models.checkpoint``), not here.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from project.config.settings import NetSettings
from project.core.age_groups import AGE_BINS, NUM_CLASSES, group_log_probs
from project.core.transforms import mirror
from project.models.backbone import (
    FEATURE_CHANNELS,
    FrozenVGG16Features,
    feature_map_size,
)
from project.models.heads import AgeGroupHead, CompactAgeHead


def average_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``N x K x 5`` logits of ``K`` members (views or heads) -> ``N x 5`` logits of their mean probability.

    One member is returned as it is (its softmax is already the mean).
    """
    members = logits.shape[1]
    if members == 1:
        return logits[:, 0]
    return torch.logsumexp(torch.log_softmax(logits, dim=2), dim=1) - math.log(members)


class AgeNet(nn.Module):
    """Frozen VGG16 conv base (+ trained VGG16 layers above it) + ``settings.ensemble_size`` heads (see the module
    docstring).

    A base cut at ``block4_full`` or ``pixels`` (``project.models.backbone.FINETUNED_CUTS``) has the rest of the conv
    base above it as ``tuned``: a trainable copy initialised with the base's own (pretrained) weights, run on the
    frozen features before the heads. Every other cut has ``tuned = None`` and trains only heads.

    ``backbone``: a pretrained conv base (``project.models.backbone.build_backbone``) for a new model; without one
    the base has random weights, as when a trained network is about to get everything from its checkpoint.
    The heads are initialised after the backbone exists, so a seeded run draws the same heads every time.
    """

    def __init__(self, settings: NetSettings, backbone: Optional[FrozenVGG16Features] = None) -> None:
        super().__init__()
        self.settings = settings
        if backbone is not None and backbone.layer != settings.input.feature_layer:
            raise ValueError(f"a {backbone.layer} backbone for a {settings.input.feature_layer} network")
        self.backbone = backbone if backbone is not None else FrozenVGG16Features(settings.input.feature_layer)
        self.backbone.to(memory_format=torch.channels_last)  # faster convolutions on CPU
        #: the trained VGG16 layers between the frozen base and the heads (None: only heads train)
        self.tuned: Optional[nn.Sequential] = self.backbone.trainable_copy()
        #: 125 per-year logits (``age`` target) or 5 group logits (``group`` target) per head
        self.outputs_per_head = AGE_BINS if settings.target == "age" else NUM_CLASSES
        self.heads = nn.ModuleList(self._new_head() for _ in range(settings.ensemble_size))

    def _new_head(self) -> nn.Module:
        side = feature_map_size(self.settings.input.image_size)
        if self.settings.head == "compact":
            return CompactAgeHead(FEATURE_CHANNELS, side, self.outputs_per_head, dropout=self.settings.dropout)
        return AgeGroupHead(FEATURE_CHANNELS * side * side, self.settings.hidden_sizes, self.settings.dropout,
                            self.outputs_per_head)

    # -- whole paths -----------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``N x 3 x S x S`` -> group logits ``N x 5``, over the views ``input`` asks for."""
        return self.forward_views(self.views(images))

    def forward_views(self, views: torch.Tensor) -> torch.Tensor:
        """``N x V x 3 x S x S`` views of each face -> group logits ``N x 5`` (the views' probabilities averaged)."""
        return self.forward_features(self.encode_views(views))

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features ``N x V x C x H x W`` -> group logits ``N x 5`` (the views' probabilities averaged)."""
        return self.logits_and_outputs(features)[0]

    # -- steps -----------------------------------------------------------------------------------------------
    def views(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``N x 3 x S x S`` -> ``N x V x 3 x S x S``: each face, and its mirror image with ``input.mirror``."""
        if self.settings.input.mirror:
            return torch.stack([images, mirror(images)], dim=1)
        return images.unsqueeze(1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``N x 3 x S x S`` -> frozen backbone features ``N x C x H x W`` (no gradient)."""
        with torch.no_grad():
            return self.backbone(images)

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """``N x V x 3 x S x S`` -> features ``N x V x C x H x W`` (all views in one backbone pass)."""
        return self.encode(views.flatten(0, 1)).unflatten(0, views.shape[:2])

    def logits_and_outputs(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features ``N x V x C x H x W`` -> group logits ``N x 5`` (heads, then views averaged) and every head's
        raw outputs ``(N * V) x heads x outputs_per_head`` (what training's objective needs)."""
        outputs = self.head_outputs(features.flatten(0, 1))
        per_view = self.average_heads(outputs).unflatten(0, features.shape[:2])
        return average_probabilities(per_view), outputs

    def head_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Frozen features ``N x C x H x W`` -> every head's raw outputs ``N x heads x outputs_per_head`` (through
        the trained VGG16 layers first, where there are some)."""
        if self.tuned is not None:
            features = self.tuned(features.contiguous(memory_format=torch.channels_last))
        return torch.stack([head(features) for head in self.heads], dim=1)

    def member_group_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``N x heads x outputs_per_head`` -> each head's group logits ``N x heads x 5``.

        Per-year outputs become group log-probabilities: a group's probability is the sum of its years'.
        """
        if self.settings.target != "age":
            return outputs
        return group_log_probs(outputs.flatten(0, 1)).view(*outputs.shape[:2], NUM_CLASSES)

    def average_heads(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``N x heads x outputs_per_head`` -> group logits ``N x 5`` of the heads' mean probability."""
        per_head = self.member_group_logits(outputs)
        return per_head[:, 0] if len(self.heads) == 1 else average_probabilities(per_head.float())

    @property
    def predicts_ages(self) -> bool:
        """Whether the heads output one logit per year of age (the ``age`` target), so ages can be estimated."""
        return self.settings.target == "age"

    def year_probabilities(self, outputs: torch.Tensor, views: int) -> torch.Tensor:
        """Raw outputs ``(N * V) x heads x 125`` -> the probability of each year of age ``N x 125``, averaged over
        heads and views the way the group probabilities are (summed over its 25 years, a group gets its probability
        before calibration)."""
        if not self.predicts_ages:
            raise ValueError("a network with the group target has no per-year outputs")
        per_item = torch.softmax(outputs.float(), dim=2).mean(dim=1)
        return per_item.unflatten(0, (-1, views)).mean(dim=1)

    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Preprocessed images ``N x 3 x S x S`` -> group logits ``N x 5`` and, for networks that predict ages,
        the probability of each year of age ``N x 125`` (else ``None``)."""
        views = self.views(images)
        logits, outputs = self.logits_and_outputs(self.encode_views(views))
        years = self.year_probabilities(outputs, views.shape[1]) if self.predicts_ages else None
        return logits, years

    def tuned_parameters(self) -> list:
        """The trained VGG16 layers' parameters (empty when only heads train)."""
        return [] if self.tuned is None else list(self.tuned.parameters())

    def regularized_weights(self) -> list:
        """The heads' kernels that get weight decay (the notebook head: its two hidden kernels, as Keras' l2)."""
        return [weight for head in self.heads for weight in head.regularized_weights()]
