"""Task 3: HPV status from the segmentation network's encoder, a head and clinical data."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset, Sampler

from hecktor import metrics
from hecktor.baselines import logistic_weights
from hecktor.checkpoints import best_fold, kfold_checkpoints, load_checkpoint
from hecktor.config import Config, HpvConfig, SegConfig
from hecktor.data.clinical import HPV_VARIABLES, ClinicalEncoder, read_clinical
from hecktor.data.loading import (
    PreparedDataset,
    augmented_dataset,
)
from hecktor.data.preprocess import load_prepared, prepared_grid
from hecktor.data.samplers import BalancedBatchSampler
from hecktor.fingerprints import file_sha256
from hecktor.models.segmentation import Plan
from hecktor.networks import hpv_network, seg_plan
from hecktor.planning import within
from hecktor.prediction import hpv_features, hpv_logit
from hecktor.tasks import task_folds
from hecktor.tasks.spec import BundleContent

log = logging.getLogger(__name__)


class ClinicalDataset(Dataset):
    """A prepared-case dataset plus each patient's encoded clinical vector and target."""

    def __init__(
        self, images: PreparedDataset, clinical: np.ndarray, targets: dict[str, np.ndarray]
    ) -> None:
        self.images = images
        self.clinical = clinical
        self.targets = targets
        self.transform = images.transform  # reseeded by the engine every epoch
        self.device_transform = images.device_transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = self.images[index]
        item["clinical"] = torch.as_tensor(self.clinical[index])
        for name, values in self.targets.items():
            item[name] = torch.as_tensor(values[index], dtype=torch.float32)
        return item


class HPVTask:
    """Task 3: HPV status from the segmentation network, its bottleneck and clinical data.

    Decision threshold: the balanced sampler trains on as many positives as negatives, so the
    logit's natural cut at 0 (probability 0.5) is the one that balanced accuracy asks for; it is
    used everywhere, never tuned on validation patients. The best epoch has the highest balanced
    accuracy, ties broken by AUC.
    """

    name = "hpv"

    def __init__(
        self, cfg: HpvConfig, seg: SegConfig, prepared: Path | str, init: Path | None = None
    ) -> None:
        self.cfg = cfg
        self.seg = seg
        self.prepared = Path(prepared)
        self.spacing, self.shape = prepared_grid(prepared)
        self.patch = within(cfg.patch_size, self.shape)
        self.table = read_clinical(prepared)
        self.encoder = ClinicalEncoder(HPV_VARIABLES)
        self.train_ids: list[str] = []
        self.init = init if cfg.init_from_seg else None
        # planned as Task 1's network, so its weights fit; the input may be larger than that patch
        self.plan = (
            Plan.from_dict(load_checkpoint(self.init)["task"]["plan"])
            if self.init is not None and self.init.is_file()
            else seg_plan(seg, self.spacing, self.shape)
        )
        self._check_sizes()
        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.cls_loss = nn.BCEWithLogitsLoss()
        # set to a dict to keep encoder features by (model, patient): the ablation scores the same
        # images under several clinical maskings, and only the head needs rerunning
        self.feature_cache: dict[tuple[int, str], torch.Tensor] | None = None

    def setup(self, train_patients: Sequence[str]) -> None:
        self.train_ids = list(train_patients)
        self.encoder = ClinicalEncoder.fit(HPV_VARIABLES, self.table.loc[self.train_ids])

    def _check_sizes(self) -> None:
        self.plan.check(self.patch, "hpv.patch_size")
        self.plan.check(self.shape, "the prepared shape (prepare.crop_mm / prepare.spacing_mm)")

    def state(self) -> dict:
        return {"encoder": self.encoder.to_dict(), "plan": self.plan.to_dict()}

    def load_state(self, state: dict) -> None:
        self.encoder = ClinicalEncoder.from_dict(state["encoder"])
        if "plan" in state:
            self.plan = Plan.from_dict(state["plan"])

    def labels(self, patients: Sequence[str]) -> np.ndarray:
        return self.table.loc[list(patients), "HPV Status"].to_numpy(dtype=np.float32)

    def build_model(self) -> nn.Module:
        return hpv_network(self.cfg, self.plan, self.encoder)

    def warm_start(self, model: nn.Module) -> None:
        """Start a new training from the Task 1 weights (``hpv.init_from_seg``), if trained, and
        the additive fusion's clinical term from the clinical logistic regression fitted on the
        same training patients."""
        if self.init is not None and self.init.is_file():
            model.segmenter.load_state_dict(load_checkpoint(self.init)["model"])  # type: ignore[union-attr]
        if self.cfg.fusion == "additive":
            x = self.encoder.transform(self.table.loc[self.train_ids])
            model.start_from_linear(*logistic_weights(x, self.labels(self.train_ids)))  # type: ignore[operator]

    def train_dataset(self, patients: Sequence[str]) -> Dataset:
        images = augmented_dataset(
            self.prepared, patients, self.patch, self.shape, self.cfg, allow_unlabelled=True
        )
        clinical = self.encoder.transform(self.table.loc[list(patients)])
        return ClinicalDataset(images, clinical, {"hpv": self.labels(patients)})

    def sampler(self, dataset: Dataset, seed: int) -> Sampler | None:
        labels = dataset.targets["hpv"]  # type: ignore[attr-defined]
        if len(set(labels.tolist())) < 2:
            log.warning("hpv: the training patients hold one class only; batches are not balanced")
            return None
        return BalancedBatchSampler(
            labels, self.cfg.train.batch_size, self.cfg.positives_per_batch, seed
        )

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        out = model(batch["image"].to(device), batch["clinical"].to(device))
        cls = self.cls_loss(out.hpv.float(), batch["hpv"].to(device))
        labelled = batch["has_label"].to(device)
        if self.cfg.seg_weight == 0 or not labelled.any():
            return self.cfg.cls_weight * cls
        seg = self.seg_loss(out.segmentation[labelled].float(), batch["label"].to(device)[labelled])
        return self.cfg.seg_weight * seg + self.cfg.cls_weight * cls

    def fingerprint(self) -> str:
        """Identifies the Task 1 weights this task starts from: new weights, new training."""
        if self.init is None or not self.init.is_file():
            return "none"
        return file_sha256(self.init)[:16]

    def logits(self, model: nn.Module, patients: Sequence[str], device: torch.device, autocast,
               unknown: Sequence[str] = ()) -> np.ndarray:  # fmt: skip
        """Encoder-only HPV logits of whole prepared volumes; ``unknown`` masks clinical variables."""
        clinical = self.encoder.transform(self.table.loc[list(patients)], unknown)
        out = []
        for i, patient in enumerate(patients):
            key = (id(model), patient)
            features = self.feature_cache.get(key) if self.feature_cache is not None else None
            if features is None:
                image = load_prepared(self.prepared, patient).image
                features = hpv_features(model, image, device, autocast)
                if self.feature_cache is not None:
                    self.feature_cache[key] = features
            out.append(hpv_logit(model, features, clinical[i], device, autocast))
        return np.asarray(out)

    def validate(
        self, model: nn.Module, patients: Sequence[str], device: torch.device, autocast
    ) -> dict[str, float]:
        logits = self.logits(model, patients, device, autocast)
        truth = self.labels(patients).astype(int)
        accuracy = metrics.balanced_accuracy(truth, (logits > 0).astype(int))
        auc = metrics.auc(truth, logits)
        return {
            "balanced_accuracy": accuracy,
            "auc": auc,
            "score": accuracy + 1e-3 * (0.0 if auc != auc else auc),
        }


def build(cfg: Config, mode: str | None = None) -> HPVTask:
    return HPVTask(cfg.hpv, cfg.seg, cfg.paths.prepared, best_fold(Path(cfg.paths.models, "seg")))


def bundle(cfg: Config, result: dict) -> BundleContent:
    """The fold ensemble (mean logit), with each fold's clinical encoder in its weights file."""
    files = kfold_checkpoints(Path(cfg.paths.models) / "hpv", task_folds(cfg, "hpv")[0])
    return BundleContent(
        members=[{"file": f"{name}.pt", "fold": name} for name in files],
        files={f"{name}.pt": path for name, path in files.items()},
        metrics={"cv": result["network"]["cv"], "test_ensemble": result["network"].get("test_ensemble"),
                 "baseline_cv": result["baseline"]["cv"]},
        extra={"threshold": "logit > 0"},
    )  # fmt: skip
