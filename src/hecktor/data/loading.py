"""Datasets of prepared cases, the Task 1 augmentation, and seeding.

Augmentation follows the paper (TrivialAugment): exactly one transform per sample, drawn uniformly
from identity, affine (rotation, scaling), gamma, Gaussian noise and Gaussian blur, each with a
random magnitude. The sample is centred on foreground with probability ``foreground_prob`` (a
foreground voxel drawn uniformly, as MONAI's positive/negative crop does: a class by its voxel
count, then one of its voxels stored at prepare time), on a random voxel otherwise. Only a region 1.25 times the patch around that centre is read
from the stored case (its compressed chunks), augmented, and centre-cropped to the patch.
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
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    SpatialPadd,
    Transform,
)
from torch.utils.data import Dataset, Sampler

from hecktor.config import AugmentConfig
from hecktor.data.preprocess import Foreground, StoredCase, foreground_locations

set_track_meta(False)  # plain tensors: MetaTensor bookkeeping slows the loop and is not needed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; the engine reseeds every epoch from (seed, epoch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ArrayCase:
    """A case held in memory, read like a stored one (:class:`~hecktor.data.preprocess.StoredCase`)."""

    def __init__(self, image: np.ndarray, label: np.ndarray | None) -> None:
        self.image, self.label = np.asarray(image, np.float32), label
        self.has_label = label is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    def foreground(self) -> Foreground:
        return foreground_locations(self.label) if self.label is not None else Foreground({}, {})

    def read(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray | None]:
        label = None if self.label is None else np.asarray(self.label)[box]
        return self.image[(slice(None), *box)], label


class ReadRegion(Randomizable, Transform):
    """From ``item["case"]`` (a stored or in-memory case), read the region of ``size`` around a
    centre drawn as the module docstring says: ``image`` (2, ...) and ``label`` (1, ...), zeros
    where the case has no label. The region lies inside the volume (shifted at its borders), and
    is smaller only where the volume is."""

    def __init__(self, size: Sequence[int], foreground_prob: float) -> None:
        self.size = [int(s) for s in size]
        self.foreground_prob = foreground_prob

    def centre(self, case) -> list[int]:
        found = case.foreground()
        classes = sorted(c for c, n in found.counts.items() if n > 0)
        if classes and self.R.rand() < self.foreground_prob:
            counts = np.array([found.counts[c] for c in classes], dtype=float)
            voxels = found.locations[classes[self.R.choice(len(classes), p=counts / counts.sum())]]
            return [int(v) for v in voxels[self.R.randint(len(voxels))]]
        return [int(self.R.randint(s)) for s in case.shape]

    def randomize(self, data=None) -> None:
        return None

    def __call__(self, item: dict) -> dict:
        case = item.pop("case")
        centre = self.centre(case)
        box = []
        for c, r, s in zip(centre, self.size, case.shape, strict=True):
            start = min(max(c - r // 2, 0), max(s - r, 0))
            box.append(slice(start, min(start + r, s)))
        image, label = case.read(tuple(box))
        if label is None:
            label = np.zeros(image.shape[1:], np.uint8)
        return {**item, "image": image, "label": np.asarray(label, np.uint8)[None]}


class PreparedDataset(Dataset):
    """Prepared cases as dicts: ``image`` (2, ...) float32, ``label`` (1, ...), ``patient``; the
    whole volume, or what ``transform`` makes of the stored case (``item["case"]``).

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
        case = StoredCase(self.root / patient)
        if not case.has_label and not self.allow_unlabelled:
            raise ValueError(f"{patient}: no label in {self.root / patient}")
        item: dict = {"case": case, "patient": patient, "has_label": case.has_label}
        if self.transform is not None:
            item = self.transform(item)
        else:
            item = ReadRegion(case.shape, 0.0)(item)  # the whole volume
        item["image"] = torch.as_tensor(item["image"], dtype=torch.float32)
        item["label"] = torch.as_tensor(item["label"]).long()
        return item


def segmentation_transform(
    patch_size: Sequence[int],
    volume_shape: Sequence[int],
    cfg: AugmentConfig,
    foreground_prob: float,
) -> Compose:
    """A region around foreground (or not) read from the case, one TrivialAugment op, then the
    patch. The input is ``{"case": ...}`` (see :class:`ReadRegion`)."""
    patch = [int(p) for p in patch_size]
    region = [max(p, min(round(p * 1.25), v)) for p, v in zip(patch, volume_shape, strict=True)]
    rotate = np.deg2rad(cfg.rotate_deg)
    scale = (cfg.scale[0] - 1.0, cfg.scale[1] - 1.0)
    keys = ["image", "label"]
    return Compose(
        [
            ReadRegion(region, foreground_prob),
            SpatialPadd(keys, region, mode="constant"),
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


class Unwrap:
    """A transform the engine reseeds every epoch with any integer seed (MONAI's need < 2**32)."""

    def __init__(self, transform: Compose) -> None:
        self.transform = transform

    def set_random_state(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed % 2**32)

    def __call__(self, item: dict) -> dict:
        return self.transform(item)


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
