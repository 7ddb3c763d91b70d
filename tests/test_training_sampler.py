"""Training and evaluation samplers: deterministic order, resume position and sharding."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from vqa.training.sampler import ResumableSampler, ShardedEvalSampler, WorkerSeeder


def test_eval_shards_ten_items_on_three_ranks_once():
    shards = [list(ShardedEvalSampler(10, rank=rank, world_size=3)) for rank in range(3)]
    assert [len(shard) for shard in shards] == [4, 3, 3]
    assert [len(ShardedEvalSampler(10, rank=rank, world_size=3)) for rank in range(3)] == [4, 3, 3]
    merged = [index for shard in shards for index in shard]
    assert len(merged) == 10
    assert sorted(merged) == list(range(10))


def test_padded_distributed_sampler_repeats_items():
    # The behaviour that ShardedEvalSampler avoids: PyTorch's sampler pads 10 items to 12.
    merged = [i for rank in range(3) for i in DistributedSampler(range(10), num_replicas=3, rank=rank, shuffle=False)]
    assert len(merged) == 12
    assert len(set(merged)) == 10


def test_eval_sampler_more_ranks_than_items():
    shards = [list(ShardedEvalSampler(2, rank=rank, world_size=4)) for rank in range(4)]
    assert shards == [[0], [1], [], []]


def test_resumable_order_depends_on_seed_and_epoch():
    sampler = ResumableSampler(50, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    again = ResumableSampler(50, seed=3)
    again.set_epoch(1)
    assert list(again) == first
    assert sorted(first) == list(range(50))
    sampler.set_epoch(2)
    assert list(sampler) != first
    other_seed = ResumableSampler(50, seed=4)
    other_seed.set_epoch(1)
    assert list(other_seed) != first


def test_resumable_start_skips_consumed_samples():
    sampler = ResumableSampler(23, seed=0)
    sampler.set_epoch(5)
    full = list(sampler)
    sampler.set_epoch(5, start=8)
    assert list(sampler) == full[8:]
    assert len(sampler) == 15
    with pytest.raises(ValueError, match="start=24"):
        sampler.set_epoch(5, start=24)


def test_resumable_shards_pad_to_equal_length():
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, seed=1, rank=rank, world_size=3)
        sampler.set_epoch(0)
        shards.append(list(sampler))
    assert [len(shard) for shard in shards] == [4, 4, 4]
    merged = [index for shard in shards for index in shard]
    assert set(merged) == set(range(10))
    assert len(merged) - len(set(merged)) == 2


def test_resumable_state_round_trip():
    sampler = ResumableSampler(12, seed=7)
    sampler.set_epoch(3, start=4)
    restored = ResumableSampler(12, seed=0)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == list(sampler)
    with pytest.raises(ValueError, match="now has 13"):
        ResumableSampler(13).load_state_dict(sampler.state_dict())


def test_worker_seeder_is_deterministic():
    WorkerSeeder(seed=1, epoch=2, rank=0)(worker_id=1)
    first = torch.rand(3)
    WorkerSeeder(seed=1, epoch=2, rank=0)(worker_id=1)
    assert torch.equal(torch.rand(3), first)
    WorkerSeeder(seed=1, epoch=2, rank=0)(worker_id=2)
    assert not torch.equal(torch.rand(3), first)
