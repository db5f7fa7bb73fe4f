"""What differs per task: model, loss, data and validation. The engine does the rest.

``TASKS`` maps task names to their builders (an explicit registry, no discovery by name);
:func:`build_task` makes one from the resolved config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset, Sampler

from hecktor import metrics
from hecktor.checkpoints import best_fold, load_checkpoint
from hecktor.config import Config, HpvConfig, RfsConfig, SegConfig
from hecktor.data.clinical import HPV_VARIABLES, RFS_VARIABLES, ClinicalEncoder, read_clinical
from hecktor.data.loading import (
    BalancedBatchSampler,
    PreparedDataset,
    Unwrap,
    segmentation_transform,
)
from hecktor.data.preprocess import load_prepared
from hecktor.fingerprints import file_sha256
from hecktor.losses import cox_loss
from hecktor.models.hpv import HPVNet
from hecktor.models.segmentation import Plan, build_segmenter, make_plan
from hecktor.models.survival import SurvivalNet
from hecktor.prediction import hpv_features, hpv_logit, rfs_risk, segment, survival_input

log = logging.getLogger(__name__)


def grid_of(summary: dict) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Spacing (z, y, x) in mm and volume shape (z, y, x) from a prepared dataset's summary (as
    ``summary.json`` and a bundle's ``prepared`` entry hold it: spacing in x, y, z)."""
    spacing = tuple(float(s) for s in reversed(summary["spacing_mm"]))
    return spacing, tuple(int(v) for v in summary["shape_zyx"])  # type: ignore[return-value]


def prepared_grid(prepared: Path | str) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Spacing (z, y, x) in mm and volume shape (z, y, x) of a prepared dataset."""
    return grid_of(json.loads((Path(prepared) / "summary.json").read_text()))


def seg_plan(cfg: SegConfig, spacing: Sequence[float], shape: Sequence[int]) -> Plan:
    """Task 1's network planned from the config, its patch clipped to the prepared volume."""
    patch = tuple(min(p, s) for p, s in zip(cfg.patch_size, shape, strict=True))
    return make_plan(cfg.network, patch, spacing, cfg.base_filters, cfg.max_filters)


def hpv_network(cfg: HpvConfig, plan: Plan, encoder: ClinicalEncoder) -> HPVNet:
    """Task 3's network: the planned Task 1 network, a head and the clinical MLP."""
    return HPVNet(build_segmenter(plan), encoder.width, cfg.mlp_width, cfg.dropout)


def rfs_network(cfg: RfsConfig, encoder: ClinicalEncoder) -> SurvivalNet:
    """Task 2's network for the clinical encoding a fold fitted."""
    return SurvivalNet(encoder.width, cfg.widths, cfg.mlp_width, cfg.dropout)


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
        transform = segmentation_transform(
            self.patch, self.shape, self.cfg.augment, self.cfg.foreground_prob
        )
        return PreparedDataset(self.prepared, patients, Unwrap(transform))

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


class ClinicalDataset(Dataset):
    """A prepared-case dataset plus each patient's encoded clinical vector and target."""

    def __init__(
        self, images: PreparedDataset, clinical: np.ndarray, targets: dict[str, np.ndarray]
    ) -> None:
        self.images = images
        self.clinical = clinical
        self.targets = targets
        self.transform = images.transform  # reseeded by the engine every epoch

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
        self.patch = tuple(min(p, s) for p, s in zip(cfg.patch_size, self.shape, strict=True))
        self.table = read_clinical(prepared)
        self.encoder = ClinicalEncoder(HPV_VARIABLES)
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
        self.encoder = ClinicalEncoder.fit(HPV_VARIABLES, self.table.loc[list(train_patients)])

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
        """Start a new training from the Task 1 weights (``hpv.init_from_seg``), if trained."""
        if self.init is not None and self.init.is_file():
            model.segmenter.load_state_dict(load_checkpoint(self.init)["model"])  # type: ignore[union-attr]

    def train_dataset(self, patients: Sequence[str]) -> Dataset:
        transform = segmentation_transform(
            self.patch, self.shape, self.cfg.augment, self.cfg.foreground_prob
        )
        images = PreparedDataset(self.prepared, patients, Unwrap(transform), allow_unlabelled=True)
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


class SurvivalDataset(Dataset):
    """CT, PET and the two mask channels of each patient, with clinical vector, time and event."""

    def __init__(self, task: RFSTask, patients: Sequence[str], inputs: str) -> None:
        self.task = task
        self.patients = list(patients)
        self.inputs = inputs
        self.clinical = task.encoder.transform(task.frame(patients, inputs))
        # a new patient has no outcome yet: NaN, never read at inference
        outcome = task.table.reindex(index=self.patients, columns=["RFS", "Relapse"])
        self.time = outcome["RFS"].to_numpy(dtype=np.float32)
        self.event = outcome["Relapse"].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> dict:
        patient = self.patients[index]
        return {
            "image": torch.as_tensor(self.task.image(patient, self.inputs)),
            "clinical": torch.as_tensor(self.clinical[index]),
            "time": torch.as_tensor(self.time[index]),
            "event": torch.as_tensor(self.event[index]),
            "patient": patient,
        }


class RFSTask:
    """Task 2: recurrence-free survival from CT, PET, masks and clinical data, Cox loss.

    ``mode`` says what the model trains on: ``gt`` (true masks and HPV status, as the paper trained)
    or ``pred`` (masks from Task 1 and HPV from Task 3, as it is tested). Validation always uses the
    predicted inputs, the only ones a new patient has. A patient without a true mask (outside
    Task 1) uses the predicted one in ``gt`` mode too. The best epoch has the highest C-index.
    """

    name = "rfs"

    def __init__(
        self, cfg: RfsConfig, prepared: Path | str, inputs: Path | str, mode: str = "pred"
    ) -> None:
        self.cfg = cfg
        self.mode = mode
        self.prepared = Path(prepared)
        self.inputs_dir = Path(inputs)
        self.table = read_clinical(prepared)
        self.inputs = pd.read_csv(self.inputs_dir / "inputs.csv").set_index("PatientID")
        self.encoder = ClinicalEncoder(RFS_VARIABLES)

    def frame(self, patients: Sequence[str], inputs: str) -> pd.DataFrame:
        """Clinical rows; with predicted inputs, HPV status is Task 3's call."""
        frame = self.table.loc[list(patients)].copy()
        if inputs == "pred":
            frame["HPV Status"] = (
                self.inputs.loc[list(patients), "hpv_pred"].astype(float).to_numpy()
            )
        return frame

    def mask(self, patient: str, inputs: str) -> np.ndarray:
        if inputs == "gt":
            label = load_prepared(self.prepared, patient).label
            if label is not None:
                return np.asarray(label)
        return np.load(self.inputs_dir / "masks" / f"{patient}.npy")

    def image(self, patient: str, inputs: str) -> np.ndarray:
        """(4, Z, Y, X): CT, PET, GTVp mask, GTVn mask."""
        return survival_input(
            load_prepared(self.prepared, patient).image, self.mask(patient, inputs)
        )

    def setup(self, train_patients: Sequence[str]) -> None:
        self.encoder = ClinicalEncoder.fit(RFS_VARIABLES, self.frame(train_patients, self.mode))

    def state(self) -> dict:
        return {"encoder": self.encoder.to_dict(), "mode": self.mode}

    def load_state(self, state: dict) -> None:
        self.encoder = ClinicalEncoder.from_dict(state["encoder"])

    def fingerprint(self) -> str:
        return (
            (self.inputs_dir / "key.txt").read_text()
            if (self.inputs_dir / "key.txt").is_file()
            else "none"
        )

    def warm_start(self, model: nn.Module) -> None:
        return None

    def build_model(self) -> nn.Module:
        return rfs_network(self.cfg, self.encoder)

    def train_dataset(self, patients: Sequence[str]) -> Dataset:
        return SurvivalDataset(self, patients, self.mode)

    def sampler(self, dataset: Dataset, seed: int) -> Sampler | None:
        return None

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        risk = model(batch["image"].to(device), batch["clinical"].to(device))
        return cox_loss(risk, batch["time"].to(device), batch["event"].to(device))

    def risks(self, model: nn.Module, patients: Sequence[str], device: torch.device, autocast,
              inputs: str = "pred") -> np.ndarray:  # fmt: skip
        """Predicted risks (log-hazards) of patients, from predicted inputs by default."""
        clinical = self.encoder.transform(self.frame(patients, inputs))
        return np.asarray([
            rfs_risk(model, self.image(p, inputs), clinical[i], device, autocast)
            for i, p in enumerate(patients)
        ])  # fmt: skip

    def risk_scale(
        self, model: nn.Module, train_ids: Sequence[str], device: torch.device, autocast
    ) -> tuple[float, float]:
        """Mean and spread of a fold model's risks on its training patients: its risk scale (the
        Cox loss fixes risks only up to a shift, so folds are compared after standardising)."""
        reference = self.risks(model, train_ids, device, autocast)
        std = float(reference.std())
        return float(reference.mean()), std if std > 0 else 1.0

    def validate(
        self, model: nn.Module, patients: Sequence[str], device: torch.device, autocast
    ) -> dict[str, float]:
        risk = self.risks(model, patients, device, autocast)
        time = self.table.loc[list(patients), "RFS"].to_numpy(float)
        event = self.table.loc[list(patients), "Relapse"].to_numpy(float)
        value = metrics.c_index(time, event, risk)
        value = 0.5 if value != value else value
        return {"c_index": value, "score": value}


def rfs_inputs_dir(cfg: Config) -> Path:
    """Where ``hecktor derive rfs`` writes Task 2's inputs (masks and HPV of the other tasks)."""
    return Path(cfg.paths.models) / "rfs_inputs"


TASKS = {"seg": SegmentationTask, "hpv": HPVTask, "rfs": RFSTask}


def build_task(cfg: Config, name: str, mode: str | None = None):
    """The task ``name`` of the resolved config, wired to its inputs."""
    if name == "seg":
        return SegmentationTask(cfg.seg, cfg.paths.prepared)
    if name == "hpv":
        return HPVTask(
            cfg.hpv, cfg.seg, cfg.paths.prepared, best_fold(Path(cfg.paths.models, "seg"))
        )
    if name == "rfs":
        inputs = rfs_inputs_dir(cfg)
        if not (inputs / "inputs.csv").is_file():
            raise ValueError(f"{inputs}: no Task 2 inputs; run `hecktor derive rfs` first")
        return RFSTask(cfg.rfs, cfg.paths.prepared, inputs, mode or cfg.rfs.modes[0])
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
