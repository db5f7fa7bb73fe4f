"""Batch samplers: what each training batch is made of, beside how its cases are read
(:mod:`hecktor.data.loading`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Sampler

from hecktor.errors import UserError


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches with a fixed number of positives and negatives; the minority class is oversampled.

    An epoch has as many batches as plain batching would (patients / batch size); each class is
    drawn in shuffled passes, so the minority class is oversampled and the majority class cycles
    through across epochs. With the paper's settings (batch 4, 2 positives) every batch holds two
    HPV-positive and two HPV-negative patients.

    Under DDP (:meth:`shard`) every process draws the same epoch from the seed and takes its own
    share of the batches (every ``world``-th, from its ``rank``): the processes see disjoint
    batches, as many each, still balanced; the epoch is rounded up to a multiple of ``world``.
    """

    yields_batches = True

    def __init__(
        self, labels: Sequence[int], batch_size: int, positives: int, seed: int,
        rank: int = 0, world: int = 1,
    ) -> None:  # fmt: skip
        if not 0 < positives < batch_size:
            raise UserError(f"positives per batch must be in 1..{batch_size - 1}, got {positives}")
        self.pos = [i for i, y in enumerate(labels) if int(y) == 1]
        self.neg = [i for i, y in enumerate(labels) if int(y) == 0]
        if not self.pos or not self.neg:
            raise UserError(
                f"both classes are needed: {len(self.pos)} positive, {len(self.neg)} negative"
            )
        self.per_batch = {1: positives, 0: batch_size - positives}
        self.seed, self.rank, self.world = seed, rank, world

    def shard(self, rank: int, world: int) -> BalancedBatchSampler:
        """This sampler for process ``rank`` of ``world``."""
        share = copy.copy(self)
        share.rank, share.world = rank, world
        return share

    def __len__(self) -> int:
        batches = math.ceil((len(self.pos) + len(self.neg)) / sum(self.per_batch.values()))
        return math.ceil(batches / self.world)

    def _stream(self, items: list[int], rng: np.random.Generator):
        while True:
            yield from rng.permutation(items).tolist()

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        pos, neg = self._stream(self.pos, rng), self._stream(self.neg, rng)
        for number in range(len(self) * self.world):
            batch = [next(pos) for _ in range(self.per_batch[1])] + [
                next(neg) for _ in range(self.per_batch[0])
            ]
            batch = rng.permutation(batch).tolist()
            if number % self.world == self.rank:
                yield batch
