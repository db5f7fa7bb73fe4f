"""Datasets of prepared cases, the Task 1 augmentation, and seeding.

Augmentation follows the paper (TrivialAugment): exactly one transform per sample, drawn uniformly
from identity, affine (rotation, scaling), gamma, Gaussian noise and Gaussian blur, each with a
random magnitude; then a crop centred on foreground with probability ``foreground_prob``, on a random
voxel otherwise. To keep the affine cheap on large volumes, a region 1.25 times the patch is cut out
first (same centre rule), augmented, and centre-cropped to the patch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import set_track_meta
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    Identityd,
    OneOf,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandGaussianSmoothd,
    SpatialPadd,
)
from torch.utils.data import Dataset, Sampler

from hecktor.config import AugmentConfig
from hecktor.data.preprocess import load_prepared

set_track_meta(False)  # plain tensors: MetaTensor bookkeeping slows the loop and is not needed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; the engine reseeds every epoch from (seed, epoch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PreparedDataset(Dataset):
    """Prepared cases as dicts: ``image`` (2, Z, Y, X) float32, ``label`` (1, Z, Y, X), ``patient``.

    With ``allow_unlabelled``, a case without a label (a Task 2 or 3 patient outside Task 1) gets an
    empty one and ``has_label`` False, so a task can leave it out of its segmentation loss.
    """

    def __init__(
        self,
        root: Path | str,
        patients: Sequence[str],
        transform: Callable[[dict], dict] | None = None,
        allow_unlabelled: bool = False,
    ) -> None:
        self.root = Path(root)
        self.patients = list(patients)
        self.transform = transform
        self.allow_unlabelled = allow_unlabelled

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> dict:
        patient = self.patients[index]
        case = load_prepared(self.root, patient)
        item: dict = {"image": np.array(case.image, dtype=np.float32), "patient": patient}
        if case.label is None and not self.allow_unlabelled:
            raise ValueError(f"{patient}: no label in {self.root / patient}")
        label = case.label if case.label is not None else np.zeros(case.image.shape[1:], np.uint8)
        item["label"] = np.array(label, dtype=np.uint8)[None]
        item["has_label"] = case.label is not None
        if self.transform is not None:
            item = self.transform(item)
        item["image"] = torch.as_tensor(item["image"], dtype=torch.float32)
        if "label" in item:
            item["label"] = torch.as_tensor(item["label"]).long()
        return item


def segmentation_transform(
    patch_size: Sequence[int],
    volume_shape: Sequence[int],
    cfg: AugmentConfig,
    foreground_prob: float,
) -> Compose:
    """Random crop around foreground (or not), one TrivialAugment op, then the patch."""
    patch = [int(p) for p in patch_size]
    region = [max(p, min(round(p * 1.25), v)) for p, v in zip(patch, volume_shape, strict=True)]
    rotate = np.deg2rad(cfg.rotate_deg)
    scale = (cfg.scale[0] - 1.0, cfg.scale[1] - 1.0)
    keys = ["image", "label"]
    return Compose(
        [
            SpatialPadd(keys, region, mode="constant"),
            RandCropByPosNegLabeld(
                keys, "label", region, pos=foreground_prob, neg=1 - foreground_prob, num_samples=1
            ),
            OneOf(
                [
                    Identityd(keys),
                    RandAffined(
                        keys,
                        prob=1.0,
                        rotate_range=(rotate, rotate, rotate),
                        scale_range=(scale, scale, scale),
                        mode=("bilinear", "nearest"),
                        padding_mode="border",
                    ),
                    RandAdjustContrastd("image", prob=1.0, gamma=cfg.gamma),
                    RandGaussianNoised("image", prob=1.0, std=cfg.noise_std),
                    RandGaussianSmoothd(
                        "image",
                        sigma_x=cfg.blur_sigma,
                        sigma_y=cfg.blur_sigma,
                        sigma_z=cfg.blur_sigma,
                        prob=1.0,
                    ),
                ]
            ),
            CenterSpatialCropd(keys, patch),
        ]
    )


def first(item: dict | list) -> dict:
    """Unwrap the one-sample list that MONAI's random crop returns."""
    return item[0] if isinstance(item, list) else item


class Unwrap:
    """Compose wrapper that returns a dict (MONAI's crop yields a list of one)."""

    def __init__(self, transform: Compose) -> None:
        self.transform = transform

    def set_random_state(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed % 2**32)

    def __call__(self, item: dict) -> dict:
        return first(self.transform(item))


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches with a fixed number of positives and negatives; the minority class is oversampled.

    An epoch has as many batches as plain batching would (patients / batch size); each class is
    drawn in shuffled passes, so the minority class is oversampled and the majority class cycles
    through across epochs. With the paper's settings (batch 4, 2 positives) every batch holds two
    HPV-positive and two HPV-negative patients.
    """

    yields_batches = True

    def __init__(self, labels: Sequence[int], batch_size: int, positives: int, seed: int) -> None:
        if not 0 < positives < batch_size:
            raise ValueError(f"positives per batch must be in 1..{batch_size - 1}, got {positives}")
        self.pos = [i for i, y in enumerate(labels) if int(y) == 1]
        self.neg = [i for i, y in enumerate(labels) if int(y) == 0]
        if not self.pos or not self.neg:
            raise ValueError(
                f"both classes are needed: {len(self.pos)} positive, {len(self.neg)} negative"
            )
        self.per_batch = {1: positives, 0: batch_size - positives}
        self.seed = seed

    def __len__(self) -> int:
        return math.ceil((len(self.pos) + len(self.neg)) / sum(self.per_batch.values()))

    def _stream(self, items: list[int], rng: np.random.Generator):
        while True:
            yield from rng.permutation(items).tolist()

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        pos, neg = self._stream(self.pos, rng), self._stream(self.neg, rng)
        for _ in range(len(self)):
            batch = [next(pos) for _ in range(self.per_batch[1])] + [
                next(neg) for _ in range(self.per_batch[0])
            ]
            yield rng.permutation(batch).tolist()
