import numpy as np
import pytest
import torch
from monai.transforms import OneOf

from hecktor.config import AugmentConfig
from hecktor.data.loading import PreparedDataset, Unwrap, segmentation_transform


def _item(shape=(24, 24, 24)):
    image = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    label = np.zeros((1, *shape), np.uint8)
    label[0, 2:5, 2:5, 2:5] = 1  # a small lesion in a corner
    return {"image": image, "label": label}


def test_transform_yields_the_patch():
    transform = Unwrap(segmentation_transform((16, 16, 16), (24, 24, 24), AugmentConfig(), 0.9))
    out = transform(_item())
    assert tuple(out["image"].shape) == (2, 16, 16, 16)
    assert tuple(out["label"].shape) == (1, 16, 16, 16)


def test_trivial_augment_applies_exactly_one_op():
    compose = segmentation_transform((16, 16, 16), (24, 24, 24), AugmentConfig(), 0.9)
    chooser = [t for t in compose.transforms if isinstance(t, OneOf)]
    assert len(chooser) == 1
    names = [type(t).__name__ for t in chooser[0].transforms]
    assert names == [
        "Identityd",
        "RandAffined",
        "RandAdjustContrastd",
        "RandGaussianNoised",
        "RandGaussianSmoothd",
    ]
    assert np.allclose(chooser[0].weights, 0.2)  # drawn uniformly
    assert all(
        getattr(t, "prob", 1.0) == 1.0 for t in chooser[0].transforms
    )  # the drawn op always runs


@pytest.mark.parametrize(("prob", "low", "high"), [(1.0, 0.99, 1.0), (0.0, 0.0, 0.35)])
def test_crop_centred_on_foreground_with_the_given_probability(prob, low, high):
    transform = Unwrap(
        segmentation_transform((8, 8, 8), (24, 24, 24), AugmentConfig(rotate_deg=0), prob)
    )
    hits = []
    for seed in range(60):
        transform.set_random_state(seed)
        hits.append(bool(transform(_item())["label"].sum() > 0))
    assert low <= np.mean(hits) <= high


def test_same_seed_same_sample():
    transform = Unwrap(segmentation_transform((16, 16, 16), (24, 24, 24), AugmentConfig(), 0.9))
    transform.set_random_state(5)
    a = transform(_item())
    transform.set_random_state(5)
    b = transform(_item())
    torch.testing.assert_close(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))


def test_dataset_reads_prepared_cases(prepared_dir):
    patients = sorted(p.name for p in prepared_dir.iterdir() if p.is_dir())[:2]
    item = PreparedDataset(prepared_dir, patients)[0]
    assert item["patient"] == patients[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 2
    assert item["label"].dtype == torch.int64 and item["label"].shape[0] == 1


def test_balanced_sampler_every_batch_has_the_stated_mix():
    from hecktor.data.loading import BalancedBatchSampler

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


@pytest.mark.parametrize(("labels", "positives"), [([1, 1, 1], 2), ([1, 0, 1], 4), ([1, 0], 0)])
def test_balanced_sampler_rejects_impossible_settings(labels, positives):
    from hecktor.data.loading import BalancedBatchSampler

    with pytest.raises(ValueError):
        BalancedBatchSampler(labels, batch_size=4, positives=positives, seed=0)
