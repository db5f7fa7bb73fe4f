"""Task 1: GTVp and GTVn from CT and PET (DynUNet or SegResNet, DiceCE, SWA, small-lesion removal)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset, Sampler

from hecktor import metrics
from hecktor.checkpoints import best_fold
from hecktor.config import Config, SegConfig
from hecktor.data.loading import augmented_dataset
from hecktor.data.preprocess import load_prepared, prepared_grid
from hecktor.errors import UserError
from hecktor.models.segmentation import Plan, build_segmenter
from hecktor.networks import seg_plan
from hecktor.prediction import segment
from hecktor.tasks.spec import BundleContent


class SegmentationTask:
    """Task 1: GTVp and GTVn from CT and PET, selected by the paper's score."""

    name = "seg"

    def __init__(self, cfg: SegConfig, prepared: Path | str) -> None:
        self.cfg = cfg
        self.prepared = Path(prepared)
        self.spacing, self.shape = prepared_grid(prepared)
        self.voxel_mm3 = float(np.prod(self.spacing))
        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True)
        self.plan = seg_plan(cfg, self.spacing, self.shape)

    @property
    def patch(self) -> tuple[int, int, int]:
        """The training patch and sliding window: the network's planned patch."""
        return self.plan.patch

    def build_model(self) -> nn.Module:
        return build_segmenter(self.plan)

    def train_dataset(self, patients: Sequence[str]) -> Dataset:
        return augmented_dataset(self.prepared, patients, self.patch, self.shape, self.cfg)

    def sampler(self, dataset: Dataset, seed: int) -> Sampler | None:
        return None

    def setup(self, train_patients: Sequence[str]) -> None:
        return None

    def state(self) -> dict:
        return {"plan": self.plan.to_dict()}

    def load_state(self, state: dict) -> None:
        """A trained network is rebuilt as it was planned, whatever the config says now."""
        if "plan" in state:
            self.plan = Plan.from_dict(state["plan"])

    def warm_start(self, model: nn.Module) -> None:
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
            case = load_prepared(self.prepared, patient)
            preds.append(self.predict(model, case.image, device, autocast))
            truths.append(np.asarray(case.label))
        scores = metrics.segmentation_scores(preds, truths, [self.voxel_mm3] * len(preds))
        return {k: float(scores[k]) for k in ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score")}


def build(cfg: Config, mode: str | None = None) -> SegmentationTask:
    return SegmentationTask(cfg.seg, cfg.paths.prepared)


def bundle(cfg: Config, result: dict) -> BundleContent:
    """The network after SWA (the best fold's when several were trained)."""
    checkpoint = best_fold(Path(cfg.paths.models) / "seg")
    if checkpoint is None:
        raise UserError(f"{cfg.paths.models}/seg: no trained model; run `hecktor train seg`")
    return BundleContent(
        members=[{"file": "model.pt", "fold": checkpoint.parent.name}],
        files={"model.pt": checkpoint},
        metrics={"holdout": result["variants"][result["chosen"]],
                 "baseline": result["variants"].get("baseline")},
    )  # fmt: skip
