"""The training data order: batches addressed by global step, so a resume continues it exactly."""

from __future__ import annotations

import torch

from lgvq.data import collate
from lgvq.experiment.config import ExperimentConfig


class StepBatches(torch.utils.data.Sampler):
    """Batches of indices addressed by global step: epoch e is a permutation seeded by
    (seed, e), cut into full global batches of ``batch_size × world``; rank r takes the r-th
    slice. Starting at any step reproduces the same order, which is what makes resume exact
    without saving sampler state."""

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, start: int = 0,
                 rank: int = 0, world: int = 1):
        if num_items < batch_size * world:
            raise ValueError(f"the dataset has {num_items} items, fewer than one batch of {batch_size * world}")
        self.num_items, self.batch_size, self.seed, self.epoch, self.start = num_items, batch_size, seed, epoch, start
        self.rank, self.world = rank, world

    @staticmethod
    def per_epoch(num_items: int, global_batch: int) -> int:
        return num_items // global_batch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=gen).tolist()
        for b in range(self.start, len(self)):
            first = (b * self.world + self.rank) * self.batch_size
            yield order[first:first + self.batch_size]

    def __len__(self) -> int:
        return self.per_epoch(self.num_items, self.batch_size * self.world)


def batches_from(dataset, config: ExperimentConfig, step: int, rank: int = 0, world: int = 1):
    """Yield this rank's (images, captions) forever, starting at global ``step``."""
    per_epoch = StepBatches.per_epoch(len(dataset), config.data.batch_size * world)
    epoch, offset = divmod(step, per_epoch)
    while True:
        dataset.set_epoch(epoch)  # before the loader copies the dataset into its workers
        sampler = StepBatches(len(dataset), config.data.batch_size, config.train.seed, epoch, offset, rank, world)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.num_workers,
            generator=torch.Generator().manual_seed(config.train.seed),  # keeps the global RNG untouched
        )
        for batch in loader:
            yield batch["image"], batch["caption"]
        epoch, offset = epoch + 1, 0
