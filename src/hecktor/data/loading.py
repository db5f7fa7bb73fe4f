"""Datasets of prepared cases, the Task 1 augmentation, and seeding.

Augmentation follows the paper (TrivialAugment): exactly one transform per sample, drawn uniformly
from identity, affine (rotation, scaling), gamma, Gaussian noise and Gaussian blur, each with a
random magnitude. The sample is centred on a labelled voxel with probability ``foreground_prob``,
on any voxel otherwise, each drawn uniformly: MONAI's positive/negative crop, with the same random
draws (a seed gives the same crops), but from the voxel indices stored when the case was prepared
instead of a search of the whole volume. Only a region 1.25 times the patch around that
centre is read from the stored case (its compressed chunks), augmented, and centre-cropped to the
patch. The read is cheap and runs in the loader's workers; the augmentation runs there too, or on
the training device on the batch (``augment.where``), where a GPU does it in milliseconds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import blosc2
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
from torch.utils.data import Dataset, get_worker_info

from hecktor.config import AugmentConfig, HpvConfig, SegConfig
from hecktor.data.preprocess import WHOLE, Foreground, StoredCase
from hecktor.devices import resolve_device
from hecktor.errors import UserError

set_track_meta(False)  # plain tensors: MetaTensor bookkeeping slows the loop and is not needed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; the engine reseeds every epoch from (seed, epoch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def region_start(
    found: Foreground, size: Sequence[int], foreground_prob: float, rng: np.random.RandomState
) -> list[int]:
    """Where a region of ``size`` starts (negative where the volume is smaller and padded).

    Its centre is a labelled voxel with probability ``foreground_prob``, else any voxel, each
    drawn uniformly on the volume padded symmetrically to at least ``size``, then shifted so the
    region lies inside: the crops that MONAI's ``RandCropByPosNegLabeld`` makes of the padded
    tensors (its background, for a uint8 tensor label, is every voxel), with the same two random
    draws, so a seed gives the crops it always did."""
    padded = [max(s, r) for s, r in zip(found.shape, size, strict=True)]
    before = [(p - s) // 2 for p, s in zip(padded, found.shape, strict=True)]
    labelled = found.labelled()
    if not len(labelled):  # MONAI warns and samples the class there is
        foreground_prob = 0.0
    if rng.rand() < foreground_prob:
        where = np.unravel_index(int(labelled[rng.randint(len(labelled))]), found.shape)
        centre = [int(w) + b for w, b in zip(where, before, strict=True)]
    else:
        centre = [int(c) for c in np.unravel_index(rng.randint(math.prod(padded)), padded)]
    return [min(max(c - r // 2, 0), p - r) - b
            for c, r, p, b in zip(centre, size, padded, before, strict=True)]  # fmt: skip


def read_box(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """The part of the region (``start``, ``size``) that lies inside a volume of ``shape``."""
    return tuple(
        slice(max(a, 0), min(a + r, s)) for a, r, s in zip(start, size, shape, strict=True)
    )


class ReadRegion(Randomizable, Transform):
    """From ``item["case"]`` (a :class:`~hecktor.data.preprocess.StoredCase`, or anything read like
    one), read the region of ``size`` that
    :func:`region_start` draws: ``image`` (2, ...) and ``label`` (1, ...), zeros where the case has
    no label; smaller where the volume is (``SpatialPadd`` pads it as MONAI's crop would)."""

    def __init__(
        self, size: Sequence[int], foreground_prob: float, dtype: type = np.float32
    ) -> None:
        self.size = [int(s) for s in size]
        self.foreground_prob = foreground_prob
        self.dtype = dtype

    def randomize(self, data=None) -> None:
        return None

    def __call__(self, item: dict) -> dict:
        case = item.pop("case")
        start = region_start(case.foreground(), self.size, self.foreground_prob, self.R)
        return {**item, **_read(case, read_box(start, self.size, case.shape), self.dtype)}


def _read(case, box: tuple[slice, ...], dtype: type = np.float32) -> dict:
    image, label = case.read(box, dtype)
    if label is None:
        label = np.zeros(image.shape[1:], np.uint8)
    return {"image": image, "label": np.asarray(label, np.uint8)[None]}


class PreparedDataset(Dataset):
    """Prepared cases as dicts: ``image`` (2, ...) float32, ``label`` (1, ...), ``patient``; the
    whole volume, or what ``transform`` makes of the stored case (``item["case"]``).

    With ``allow_unlabelled``, a case without a label (a Task 2 or 3 patient outside Task 1) gets an
    empty one and ``has_label`` False, so a task can leave it out of its segmentation loss.
    ``device_transform``: what the training loop applies to each sample on its device (see
    :func:`augment_batch`), after the loader's ``transform``; items then stay as read (float16
    image, uint8 label) until they are there.
    """

    def __init__(
        self,
        root: Path | str,
        patients: Sequence[str],
        transform: Callable[[dict], dict] | None = None,
        allow_unlabelled: bool = False,
        device_transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.root = Path(root)
        self.patients = list(patients)
        self.transform = transform
        self.allow_unlabelled = allow_unlabelled
        self.device_transform = device_transform

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> dict:
        patient = self.patients[index]
        case = StoredCase(self.root / patient)
        if not case.has_label and not self.allow_unlabelled:
            raise UserError(f"{patient}: no label in {self.root / patient}")
        item: dict = {"case": case, "patient": patient, "has_label": case.has_label}
        if self.transform is not None:
            item = self.transform(item)
        else:
            item = {**item, **_read(item.pop("case"), WHOLE)}
        if self.device_transform is None:
            item["image"] = torch.as_tensor(item["image"], dtype=torch.float32)
            item["label"] = torch.as_tensor(item["label"]).long()
        else:  # as read (float16, uint8): half the bytes to the device, converted there
            item["image"], item["label"] = (torch.as_tensor(item[k]) for k in ("image", "label"))
        return item


def segmentation_transform(
    patch_size: Sequence[int],
    volume_shape: Sequence[int],
    cfg: AugmentConfig,
    foreground_prob: float,
    on_device: bool = False,
) -> tuple[Compose, Compose | None]:
    """The sample's transforms: (in the loader, on the training device). The loader reads a
    region around foreground (or not) from the case (``{"case": ...}``, see :class:`ReadRegion`);
    then one TrivialAugment op and the patch, in the loader too, or on the device (``on_device``:
    the second transform, applied to each sample of the batch there)."""
    patch = [int(p) for p in patch_size]
    region = [max(p, min(round(p * 1.25), v)) for p, v in zip(patch, volume_shape, strict=True)]
    keys = ["image", "label"]
    dtype = np.float16 if on_device else np.float32  # converted on the device: half the bytes
    read = [ReadRegion(region, foreground_prob, dtype), SpatialPadd(keys, region, mode="constant")]
    rotate = np.deg2rad(cfg.rotate_deg)
    scale = (cfg.scale[0] - 1.0, cfg.scale[1] - 1.0)
    augment = [
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
    if on_device:
        return Compose(read), Compose(augment)
    return Compose(read + augment), None  # one Compose: its seeds are drawn as they always were


def augments_on_device(where: str, device: torch.device) -> bool:
    """Whether ``augment.where`` puts the augmentation on the training device: ``auto`` does on a
    GPU (a paper-scale sample takes a CPU core 1.4 s, the GPU step 0.27 s: README, GPU section)."""
    return where == "device" or (where == "auto" and device.type == "cuda")


def augment_batch(transform: Callable[[dict], dict], batch: dict, device: torch.device) -> dict:
    """``batch`` with its images and labels on ``device``, each sample transformed there."""
    image = batch["image"].to(device, non_blocking=True).float()
    label = batch["label"].to(device, non_blocking=True).long()
    samples = [transform({"image": i, "label": m}) for i, m in zip(image, label, strict=True)]
    return {**batch,
            "image": torch.stack([torch.as_tensor(s["image"]) for s in samples]).float(),
            "label": torch.stack([torch.as_tensor(s["label"]) for s in samples]).long()}  # fmt: skip


def augmented_dataset(
    root: Path | str,
    patients: Sequence[str],
    patch: Sequence[int],
    volume_shape: Sequence[int],
    section: SegConfig | HpvConfig,
    allow_unlabelled: bool = False,
) -> PreparedDataset:
    """A task's training patches: :func:`segmentation_transform` with the section's augmentation,
    split between loader and device as ``augment.where`` says for its ``train.device``."""
    device = resolve_device(section.train.device)
    on_device = augments_on_device(section.augment.where, device)
    read, augment = segmentation_transform(
        patch, volume_shape, section.augment, section.foreground_prob, on_device
    )
    return PreparedDataset(root, patients, Unwrap(read), allow_unlabelled,
                           Unwrap(augment) if augment is not None else None)  # fmt: skip


def init_worker(seed: int, worker: int) -> None:
    """Start a loader worker: an augmentation stream of its own (a worker starts with a copy of
    the main process's transform, and its samples would repeat the other workers' draws) and one
    decompression thread (the workers are the parallelism)."""
    blosc2.set_nthreads(1)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed + 7_919 * (worker + 1))


class Unwrap:
    """A transform the engine reseeds every epoch with any integer seed (MONAI's need < 2**32)."""

    def __init__(self, transform: Compose) -> None:
        self.transform = transform

    def set_random_state(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed % 2**32)

    def __call__(self, item: dict) -> dict:
        return self.transform(item)
