"""Datasets of prepared cases, the Task 1 augmentation, and seeding.

Augmentation follows the paper (TrivialAugment): exactly one transform per sample, drawn uniformly
from identity, affine (rotation, scaling), gamma, Gaussian noise and Gaussian blur, each with a
random magnitude; then a crop centred on foreground with probability ``foreground_prob``, on a random
voxel otherwise. To keep the affine cheap on large volumes, a region 1.25 times the patch is cut out
first (same centre rule), augmented, and centre-cropped to the patch.
"""

from __future__ import annotations

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
from torch.utils.data import Dataset

from hecktor.config import AugmentConfig
from hecktor.data.preprocess import load_case

set_track_meta(False)  # plain tensors: MetaTensor bookkeeping slows the loop and is not needed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; the engine reseeds every epoch from (seed, epoch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PreparedDataset(Dataset):
    """Prepared cases as dicts: ``image`` (2, Z, Y, X) float32, ``label`` (1, Z, Y, X), ``patient``."""

    def __init__(
        self,
        root: Path | str,
        patients: Sequence[str],
        transform: Callable[[dict], dict] | None = None,
        with_label: bool = True,
    ) -> None:
        self.root = Path(root)
        self.patients = list(patients)
        self.transform = transform
        self.with_label = with_label

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> dict:
        patient = self.patients[index]
        case = load_case(self.root, patient)
        item: dict = {"image": np.array(case.image, dtype=np.float32), "patient": patient}
        if self.with_label:
            if case.label is None:
                raise ValueError(f"{patient}: no label in {self.root / patient}")
            item["label"] = np.array(case.label, dtype=np.uint8)[None]
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
