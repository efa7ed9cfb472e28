"""Poisson sampling split across the ranks of a hospital's process group, with empty shares kept.

Opacus 1.6's `DistributedUniformWithReplacementSampler` is the right mechanism (each rank keeps each
row of its fixed shard with probability q, so the union is one Poisson sample of the whole table at
rate q), but it silently skips a rank's empty share. That rank would then take fewer steps than the
others and leave them waiting in the gradient all-reduce, and the accountant's step count would be
wrong. This sampler yields the empty share too: the rank takes its (zero) part of a step like the rest.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from opacus.data_loader import wrap_collate_with_empty
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate


class EveryStepSampler(DistributedUniformWithReplacementSampler):
    """`DistributedUniformWithReplacementSampler` that yields every step's share, empty or not."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        # The shard split is a fixed public permutation (Opacus': seed 0); only the draws below are secret.
        order = torch.randperm(self.total_size, generator=torch.Generator().manual_seed(self.shuffle_seed))
        shard = order[self.rank : self.total_size : self.num_replicas]
        for _ in range(self.num_batches):
            keep = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield shard[keep.nonzero(as_tuple=False).reshape(-1)]


def distributed_poisson_loader(dataset: TensorDataset, *, batch_size: int, generator: torch.Generator) -> DataLoader:
    """This rank's loader: the rate and the step count are the single-process run's (``plan_round``)."""
    batches = -(-len(dataset) // batch_size)
    sampler = EveryStepSampler(total_size=len(dataset), sample_rate=1 / batches, generator=generator)
    first = dataset[0]
    collate = wrap_collate_with_empty(
        collate_fn=default_collate,
        sample_empty_shapes=[(0, *x.shape) for x in first],
        dtypes=[x.dtype for x in first],
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
