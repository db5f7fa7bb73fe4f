"""What differs per task: model, loss, data and validation. The engine does the rest.

``TASKS`` maps task names to their builders (an explicit registry, no discovery by name).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset, Sampler

from hecktor import metrics
from hecktor.config import SegConfig
from hecktor.data.loading import PreparedDataset, Unwrap, segmentation_transform
from hecktor.data.preprocess import load_case
from hecktor.inference.predictor import segment
from hecktor.models.segmentation import build_dynunet


def prepared_grid(prepared: Path | str) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Spacing (z, y, x) in mm and volume shape (z, y, x) of a prepared dataset."""
    summary = json.loads((Path(prepared) / "summary.json").read_text())
    spacing = tuple(float(s) for s in reversed(summary["spacing_mm"]))
    return spacing, tuple(int(v) for v in summary["shape_zyx"])  # type: ignore[return-value]


class SegmentationTask:
    """Task 1: GTVp and GTVn from CT and PET, selected by the paper's score."""

    name = "seg"

    def __init__(self, cfg: SegConfig, prepared: Path | str) -> None:
        self.cfg = cfg
        self.prepared = Path(prepared)
        self.spacing, self.shape = prepared_grid(prepared)
        self.patch = tuple(min(p, s) for p, s in zip(cfg.patch_size, self.shape, strict=True))
        self.voxel_mm3 = float(np.prod(self.spacing))
        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True)

    def build_model(self) -> nn.Module:
        return build_dynunet(self.patch, self.spacing, self.cfg.base_filters, self.cfg.max_filters)

    def train_dataset(self, patients: Sequence[str]) -> Dataset:
        transform = segmentation_transform(
            self.patch, self.shape, self.cfg.augment, self.cfg.foreground_prob
        )
        return PreparedDataset(self.prepared, patients, Unwrap(transform))

    def sampler(self, dataset: Dataset, seed: int) -> Sampler | None:
        return None

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        logits = model(batch["image"].to(device))
        return self.criterion(logits.float(), batch["label"].to(device))

    def predict(self, model: nn.Module, image, device: torch.device, autocast) -> np.ndarray:
        return segment(
            model, image, self.patch, overlap=self.cfg.sw_overlap, sw_batch_size=self.cfg.sw_batch_size,
            device=device, autocast=autocast,
        )  # fmt: skip

    def validate(
        self, model: nn.Module, patients: Sequence[str], device: torch.device, autocast
    ) -> dict[str, float]:
        preds, truths = [], []
        for patient in patients:
            case = load_case(self.prepared, patient)
            preds.append(self.predict(model, case.image, device, autocast))
            truths.append(np.asarray(case.label))
        scores = metrics.segmentation_scores(preds, truths, [self.voxel_mm3] * len(preds))
        return {k: float(scores[k]) for k in ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score")}


TASKS = {"seg": SegmentationTask}
