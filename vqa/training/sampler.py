"""Samplers for resumable training and for distributed evaluation.

``ResumableSampler`` draws the training order from ``(seed, epoch)`` alone and can start
part-way through an epoch, so a resumed run reads the same remaining samples as a run
that was never interrupted. ``ShardedEvalSampler`` splits an evaluation set across ranks
without padding, so that every question is evaluated exactly once.
"""

from __future__ import annotations

import math
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "ShardedEvalSampler", "derive_seed", "WorkerSeeder"]


def derive_seed(*keys: int) -> int:
    """Mix integer keys (seed, epoch, rank, ...) into one 63-bit seed with numpy's SeedSequence."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded training order that depends only on ``(seed, epoch)``.

    Every rank builds the same permutation and keeps every ``world_size``-th index from
    ``rank`` on. When the item count does not divide evenly, the permutation is padded
    with its first items, because DDP needs the same number of batches on every rank.
    Those few samples are then seen twice in that epoch.

    Args:
        num_items: length of the dataset.
        seed: base seed of the run.
        shuffle: draw a new permutation each epoch; False keeps dataset order.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, num_items: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if num_items <= 0:
            raise ValueError(f"the training set is empty (num_items={num_items}); check data.root and the split")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    @property
    def num_samples(self) -> int:
        """Samples per rank in a whole epoch."""
        return math.ceil(self.num_items / self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` samples of this rank's shard."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start={start} is outside this rank's epoch of {self.num_samples} samples")
        self.epoch = epoch
        self.start = start

    def epoch_indices(self) -> list[int]:
        """This rank's whole shard for the current epoch, before skipping ``start``."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        total = self.num_samples * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_items": self.num_items,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "start": self.start,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch and position; the dataset length must match the checkpoint."""
        if state["num_items"] != self.num_items:
            raise ValueError(
                f"the checkpoint was trained on {state['num_items']} samples but the training set now has "
                f"{self.num_items}; resume with the same data settings (data.max_train_samples, split)"
            )
        self.seed = state["seed"]
        self.shuffle = state["shuffle"]
        self.set_epoch(state["epoch"], state["start"])


class ShardedEvalSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank`` on, in dataset order, with no padding.

    Ranks get shards whose lengths differ by at most one (10 items on 3 ranks: 4, 3, 3),
    so evaluation must not run collectives per batch. Unlike
    ``torch.utils.data.DistributedSampler``, no item is repeated to even out the shards.

    Args:
        num_items: length of the evaluation set.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))


class WorkerSeeder:
    """``worker_init_fn`` that seeds ``random``, numpy and torch from (seed, epoch, rank, worker id).

    Args:
        seed: base seed of the run.
        epoch: current epoch.
        rank: this process's rank.
    """

    def __init__(self, seed: int, epoch: int, rank: int):
        self.seed = seed
        self.epoch = epoch
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        worker_seed = derive_seed(self.seed, self.epoch, self.rank, worker_id)
        random.seed(worker_seed)
        np.random.seed(worker_seed % (1 << 32))
        torch.manual_seed(worker_seed)
