"""The balanced batch sampler: each batch's mix, its seed, its shards."""

import pytest

from hecktor.data.samplers import BalancedBatchSampler


def test_balanced_sampler_every_batch_has_the_stated_mix():
    labels = [1] * 27 + [0] * 3  # 90 % positive, as HECKTOR's HPV
    sampler = BalancedBatchSampler(labels, batch_size=4, positives=2, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 8  # as many batches as plain batching: ceil(30 / 4)
    for batch in batches:
        assert len(batch) == 4
        assert sum(labels[i] for i in batch) == 2
    seen = [i for b in batches for i in b]
    positives = [i for i in seen if labels[i] == 1]
    assert len(positives) == len(set(positives)) == 16  # no positive twice within an epoch
    negatives = [i for i in seen if labels[i] == 0]
    assert len(negatives) == 16 and set(negatives) == {27, 28, 29}  # oversampled
    assert list(BalancedBatchSampler(labels, 4, 2, seed=0)) == batches  # seeded
    assert list(BalancedBatchSampler(labels, 4, 2, seed=1)) != batches


def test_balanced_sampler_shards_disjoint_balanced_batches_across_processes():
    labels = [1] * 27 + [0] * 3
    whole = BalancedBatchSampler(labels, batch_size=4, positives=2, seed=3)
    shards = [list(whole.shard(rank, 2)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole.shard(0, 2)) == 4  # ceil(8 / 2)
    for batches in shards:
        assert all(len(b) == 4 and sum(labels[i] for i in b) == 2 for b in batches)
    assert not {tuple(b) for b in shards[0]} & {tuple(b) for b in shards[1]}
    positives = [i for s in shards for b in s for i in b if labels[i] == 1]
    assert len(positives) == len(set(positives)) == 16  # one epoch shared out, none twice
    assert list(whole) == [b for pair in zip(*shards, strict=True) for b in pair]  # world 1: all


@pytest.mark.parametrize(("labels", "positives", "says"), [
    ([1, 1, 1], 2, "both classes are needed: 3 positive, 0 negative"),
    ([1, 0, 1], 4, r"positives per batch must be in 1\.\.3, got 4"),
    ([1, 0], 0, r"positives per batch must be in 1\.\.3, got 0"),
])  # fmt: skip
def test_balanced_sampler_rejects_impossible_settings(labels, positives, says):
    with pytest.raises(ValueError, match=says):
        BalancedBatchSampler(labels, batch_size=4, positives=positives, seed=0)


def test_the_sampler_gives_each_class_its_own_count_and_new_batches_each_epoch():
    labels = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # 2 positives, 10 negatives
    one_positive = BalancedBatchSampler(labels, batch_size=4, positives=1, seed=0)
    batches = list(one_positive)
    assert len(batches) == 3
    for batch in batches:
        assert sorted(labels[i] for i in batch) == [0, 0, 0, 1]  # 1 positive and 3 negatives
    three_positives = list(BalancedBatchSampler(labels, batch_size=4, positives=3, seed=0))
    assert all(sorted(labels[i] for i in b) == [0, 1, 1, 1] for b in three_positives)
    # the engine reseeds the sampler every epoch: another seed, other batches
    assert list(BalancedBatchSampler(labels, 4, 1, seed=1)) != batches
