"""The trainable heads on top of the frozen features, as plain ``nn.Module``s: the notebook's and the compact one."""

from __future__ import annotations

from typing import Iterable, List, Sequence

import torch
from torch import nn

from project.core.age_groups import NUM_CLASSES


class AgeGroupHead(nn.Module):
    """Flatten -> [Linear + ReLU + Dropout] per hidden size -> Linear(num_classes).

    With the defaults (hidden 1000 and 256, dropout 0.5) and 7x7x512 features this is the Keras notebook's head:
    25,346,541 parameters. The Keras ``l2(0.001)`` kernel regularisers apply to the hidden layers' weights only;
    :meth:`regularized_weights` names them so the optimizer can give just those tensors weight decay.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int] = (1000, 256),
        dropout: float = 0.5,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Flatten()]
        self.hidden: List[nn.Linear] = []
        width = in_features
        for size in hidden_sizes:
            linear = nn.Linear(width, size)
            self.hidden.append(linear)
            layers += [linear, nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``N x C x H x W`` (or already flat ``N x D``) -> logits ``N x num_classes``."""
        return self.layers(features)

    def regularized_weights(self) -> Iterable[nn.Parameter]:
        """The hidden layers' weight matrices: the tensors Keras' ``l2`` regulariser applied to."""
        return [layer.weight for layer in self.hidden]


class CompactAgeHead(nn.Module):
    """A head that keeps the face's layout but few parameters: 1x1 conv (512 -> ``channels``) + BatchNorm, then
    Flatten -> Dropout -> Linear(``hidden``) + BatchNorm -> Dropout -> Linear(``num_outputs``).

    UTKFace faces are aligned, so *where* a feature fires matters (the notebook's flattened head keeps that, the
    pooled heads lose it); squeezing the channels first cuts the 25 M-parameter head to ~1.7 M (1.3 M at 200 px),
    which over-fits far less on 21 k training images. ``num_outputs`` is 125 for the per-year age target of the
    default recipe.
    """

    def __init__(
        self,
        in_channels: int,
        map_size: int,
        num_outputs: int,
        channels: int = 64,
        hidden: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.classify = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels * map_size * map_size, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``N x C x H x W`` -> ``N x num_outputs``."""
        return self.classify(self.squeeze(features))

    def regularized_weights(self) -> Iterable[nn.Parameter]:
        """The 1x1 conv's and the two linear layers' kernels (weight decay is for these, not for biases or
        BatchNorm)."""
        return [self.squeeze[0].weight, self.classify[2].weight, self.classify[6].weight]
