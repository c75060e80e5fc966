"""Samplers that keep runs exact: a resumable shuffle for training, no padding or repeats for evaluation."""

from __future__ import annotations

from typing import Optional

import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch, so a run resumed from a checkpoint sees exactly the order
    an uninterrupted run would have seen (the default sampler draws from the global RNG, whose state is not in the
    checkpoint).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def evaluation_sampler(dataset: Dataset, world_size: int, rank: int) -> Optional[Sampler]:
    """Under DDP: each process gets a disjoint share of val/test, none padded or repeated (``None`` otherwise).

    Lightning's default DistributedSampler pads the last batch with duplicates, which would make test accuracy
    under DDP differ from single-process accuracy; torchmetrics then combines the exact per-process counts.
    """
    if world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
