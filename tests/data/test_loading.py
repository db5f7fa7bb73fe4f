import numpy as np
import pytest
import torch
from monai.transforms import OneOf, RandCropByPosNegLabeld, SpatialPadd

from hecktor.config import AugmentConfig
from hecktor.data.loading import (
    PreparedDataset,
    ReadRegion,
    Unwrap,
    augment_batch,
    segmentation_transform,
)
from hecktor.data.preprocess import Foreground, foreground_of


class ArrayCase:
    """A case held in memory, read like a stored one (:class:`~hecktor.data.preprocess.StoredCase`)."""

    def __init__(self, image: np.ndarray, label: np.ndarray | None) -> None:
        self.image, self.label = np.asarray(image, np.float32), label
        self.has_label = label is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])

    def foreground(self) -> Foreground:
        return foreground_of(self.label) if self.label is not None else Foreground.empty(self.shape)

    def read(self, box, dtype=np.float32):
        label = None if self.label is None else np.asarray(self.label)[box]
        return self.image[(slice(None), *box)].astype(dtype, copy=False), label


def _loader_side(*args, **kwargs):
    """The loader's transform when everything runs there (the default)."""
    read, on_device = segmentation_transform(*args, **kwargs)
    assert on_device is None
    return read


def _item(shape=(24, 24, 24)):
    image = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:5, 2:5, 2:5] = 1  # a small lesion in a corner
    return {"case": ArrayCase(image, label)}


def test_transform_yields_the_patch():
    transform = Unwrap(_loader_side((16, 16, 16), (24, 24, 24), AugmentConfig(), 0.9))
    out = transform(_item())
    assert tuple(out["image"].shape) == (2, 16, 16, 16)
    assert tuple(out["label"].shape) == (1, 16, 16, 16)


def test_trivial_augment_applies_exactly_one_op():
    compose = _loader_side((16, 16, 16), (24, 24, 24), AugmentConfig(), 0.9)
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
    transform = Unwrap(_loader_side((8, 8, 8), (24, 24, 24), AugmentConfig(rotate_deg=0), prob))
    hits = []
    for seed in range(60):
        transform.set_random_state(seed)
        hits.append(bool(transform(_item())["label"].sum() > 0))
    assert low <= np.mean(hits) <= high


def test_same_seed_same_sample():
    transform = Unwrap(_loader_side((16, 16, 16), (24, 24, 24), AugmentConfig(), 0.9))
    transform.set_random_state(5)
    a = transform(_item())
    transform.set_random_state(5)
    b = transform(_item())
    torch.testing.assert_close(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))


@pytest.mark.parametrize("shape", [(24, 24, 24), (30, 7, 20)])  # (30, 7, 20): padded on y
def test_regions_are_the_ones_monai_crops_from_the_whole_volume_with_the_same_seed(shape):
    """Stored voxel indices, no search of the volume, and still MONAI's positive/negative crop
    (centred on a labelled voxel, or on any voxel) draw for draw: a seed trains on the crops it
    always did."""
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[3:6, 2:5, 4:9] = 1
    label[20, 6, 15] = 2  # lone voxels near the edges
    label[-1, 0, -1] = 1
    region = (16, 16, 16)
    keys = ["image", "label"]
    read, pad = ReadRegion(region, 0.7), SpatialPadd(keys, region)
    monai = RandCropByPosNegLabeld(keys, "label", region, pos=0.7, neg=0.3,
                                   fg_indices_key="fg", bg_indices_key="bg")  # fmt: skip
    for labelled in (label, np.zeros_like(label)):
        whole = SpatialPadd(keys, region)({"image": image, "label": labelled[None]})
        whole["fg"] = np.flatnonzero(np.asarray(whole["label"]))
        whole["bg"] = np.arange(np.asarray(whole["label"]).size)  # any voxel
        read.set_random_state(11)
        monai.set_random_state(11)
        for _ in range(60):
            a = pad(read({"case": ArrayCase(image, labelled if labelled.any() else None)}))
            b = monai(dict(whole))[0]
            np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
            np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))


def test_an_unlabelled_case_reads_an_empty_label():
    case = ArrayCase(np.zeros((2, 12, 12, 12), np.float32), None)
    out = ReadRegion((8, 8, 8), 1.0)({"case": case})
    assert out["label"].shape == (1, 8, 8, 8) and not out["label"].any()


def test_augmentation_on_the_device_gives_the_patch_and_repeats_with_its_seed():
    read, on_device = segmentation_transform(
        (16, 16, 16), (24, 24, 24), AugmentConfig(), 0.9, on_device=True
    )
    read, on_device = Unwrap(read), Unwrap(on_device)
    read.set_random_state(2)
    regions = [read(_item()) for _ in range(3)]
    assert {tuple(np.shape(r["image"])) for r in regions} == {(2, 20, 20, 20)}  # 1.25 x patch
    batch = {
        "image": torch.stack([torch.as_tensor(r["image"]) for r in regions]),
        "label": torch.stack([torch.as_tensor(r["label"]) for r in regions]).long(),
        "patient": ["a", "b", "c"],
    }
    outs = []
    for _ in range(2):
        on_device.set_random_state(4)
        outs.append(augment_batch(on_device, batch, torch.device("cpu")))
    assert outs[0]["image"].shape == (3, 2, 16, 16, 16) and outs[0]["image"].dtype == torch.float32
    assert outs[0]["label"].shape == (3, 1, 16, 16, 16) and outs[0]["label"].dtype == torch.long
    assert outs[0]["patient"] == ["a", "b", "c"]
    torch.testing.assert_close(outs[0]["image"], outs[1]["image"])
    assert not torch.equal(outs[0]["image"][0], outs[0]["image"][1])  # each sample its own draw


def test_dataset_reads_prepared_cases(prepared_dir):
    patients = sorted(p.name for p in prepared_dir.iterdir() if p.is_dir())[:2]
    item = PreparedDataset(prepared_dir, patients)[0]
    assert item["patient"] == patients[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 2
    assert item["label"].dtype == torch.int64 and item["label"].shape[0] == 1
