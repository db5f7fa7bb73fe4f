"""Task 2: recurrence-free survival from CT, PET, masks and clinical data, Cox loss."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from hecktor import metrics
from hecktor.baselines import cox_weights
from hecktor.checkpoints import kfold_checkpoints, load_checkpoint, model_from
from hecktor.config import Config, RfsConfig
from hecktor.data.clinical import RFS_VARIABLES, ClinicalEncoder, read_clinical
from hecktor.data.preprocess import StoredCase, prepared_grid
from hecktor.devices import autocast_for, precision_for, resolve_device
from hecktor.errors import UserError
from hecktor.losses import cox_loss
from hecktor.models.survival import lesion_statistics
from hecktor.networks import rfs_input, rfs_network
from hecktor.prediction import rfs_risk
from hecktor.tasks import task_folds
from hecktor.tasks.spec import BundleContent

# the Task 3 fold whose HPV status the paper's chain uses, in the folder of Task 2's inputs
SINGLE_FOLD = "single_fold.json"
# Task 2's inputs: true masks and HPV; predicted masks and HPV (out of fold, else the Task 3
# ensemble's); predicted masks with HPV from one Task 3 fold model (the paper's submission)
INPUTS = ("gt", "pred", "pred_single")


def rfs_inputs_dir(cfg: Config) -> Path:
    """Where ``hecktor derive rfs`` writes Task 2's inputs (masks and HPV of the other tasks)."""
    return Path(cfg.paths.models) / "rfs_inputs"


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
        self.train_ids: list[str] = []
        self.spacing, _ = prepared_grid(prepared)
        self.cache: dict[tuple[str, str], np.ndarray] = {}  # (patient, inputs): input

    def frame(self, patients: Sequence[str], inputs: str) -> pd.DataFrame:
        """Clinical rows; with predicted inputs, HPV status is Task 3's call (see :data:`INPUTS`)."""
        frame = self.table.loc[list(patients)].copy()
        if inputs != "gt":
            column = "hpv_single_pred" if inputs == "pred_single" else "hpv_pred"
            frame["HPV Status"] = self.inputs.loc[list(patients), column].astype(float).to_numpy()
        return frame

    def mask(self, patient: str, inputs: str) -> np.ndarray:
        if inputs == "gt":
            label = StoredCase(self.prepared / patient).whole_label()
            if label is not None:
                return label
        return np.load(self.inputs_dir / "masks" / f"{patient}.npy")

    def image(self, patient: str, inputs: str) -> np.ndarray:
        """(4, Z, Y, X): CT, PET, GTVp mask, GTVn mask, on ``rfs``'s input grid; only the box
        around the lesions is read (``rfs.input_box_mm``), and kept in memory (float16) while
        ``rfs.cache_gb`` allows."""
        key = (patient, "gt" if inputs == "gt" else "pred")  # HPV is not in the image
        if key in self.cache:
            return self.cache[key].astype(np.float32)
        case = StoredCase(self.prepared / patient)
        found = rfs_input(self.cfg, self.mask(patient, key[1]), self.spacing,
                          lambda box: case.read(box, np.float16)[0])  # fmt: skip
        kept = sum(a.nbytes for a in self.cache.values()) + found.nbytes // 2
        if kept <= self.cfg.cache_gb * 1e9:
            self.cache[key] = found.astype(np.float16)  # its values are float16's (exact)
        return found

    def setup(self, train_patients: Sequence[str]) -> None:
        self.train_ids = list(train_patients)
        self.encoder = ClinicalEncoder.fit(RFS_VARIABLES, self.frame(self.train_ids, self.mode))

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
        """The additive fusion's linear term starts as a Cox model of the clinical variables (and
        the lesion statistics, where the network has them) fitted on the same training patients."""
        if self.cfg.fusion != "additive":
            return
        ids = self.train_ids
        x = self.encoder.transform(self.frame(ids, self.mode))
        if self.cfg.lesion_features:
            images = torch.as_tensor(np.stack([self.image(p, self.mode) for p in ids]))
            x = np.concatenate([x, lesion_statistics(images, model.voxel_cc).numpy()], axis=1)
        outcome = self.table.loc[ids, ["RFS", "Relapse"]].to_numpy(float)
        model.start_from_linear(cox_weights(x, outcome[:, 0], outcome[:, 1]))  # type: ignore[operator]

    def build_model(self) -> nn.Module:
        return rfs_network(self.cfg, self.encoder, self.spacing)

    def train_dataset(self, patients: Sequence[str]) -> Dataset:
        workers = self.cfg.train.num_workers
        if self.cfg.cache_gb and workers:  # computed here, so that every worker starts with them
            with ThreadPoolExecutor(workers) as pool:  # decompression releases the GIL
                list(pool.map(lambda p: self.image(p, self.mode), patients))
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

    def risk_scale(self, model: nn.Module, train_ids: Sequence[str], device: torch.device,
                   autocast, inputs: str = "pred") -> tuple[float, float]:  # fmt: skip
        """Mean and spread of a fold model's risks on its training patients: its risk scale (the
        Cox loss fixes risks only up to a shift, so folds are compared after standardising)."""
        reference = self.risks(model, train_ids, device, autocast, inputs)
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


def build(cfg: Config, mode: str | None = None) -> RFSTask:
    inputs = rfs_inputs_dir(cfg)
    if not (inputs / "inputs.csv").is_file():
        raise UserError(f"{inputs}: no Task 2 inputs; run `hecktor derive rfs` first")
    return RFSTask(cfg.rfs, cfg.paths.prepared, inputs, mode or cfg.rfs.modes[0])


def registered_mode(cfg: Config) -> str:
    """The mode whose folds are registered: true inputs for the paper's chain; otherwise predicted
    inputs (what a new patient has) if trained."""
    if cfg.rfs.chain == "paper":
        return "gt"
    return "pred" if "pred" in cfg.rfs.modes else cfg.rfs.modes[0]


def bundle(cfg: Config, result: dict) -> BundleContent:
    """The chain ``rfs.chain`` names: the fold ensemble (trained on predicted inputs, what a new
    patient has) or the paper's (its best fold trained on true inputs, HPV from one Task 3 fold),
    with the mean and spread of each member's risks on its training patients, by which its risks
    are standardised before they are averaged (as in cross-validation)."""
    mode = registered_mode(cfg)
    folds = task_folds(cfg, "rfs")[0]
    files = kfold_checkpoints(Path(cfg.paths.models) / "rfs", folds, f"{mode}-")
    chain = result["chains"][cfg.rfs.chain]
    extra = {"mode": mode, "chain": cfg.rfs.chain}
    if cfg.rfs.chain == "paper":
        files = {chain["fold"]: files[chain["fold"]]}
        extra["hpv_fold"] = chain["hpv_fold"]
    task = RFSTask(cfg.rfs, cfg.paths.prepared, rfs_inputs_dir(cfg), mode)
    device = resolve_device(cfg.rfs.train.device)
    autocast = autocast_for(precision_for(cfg.rfs.train.precision, device), device)
    train_of = {name: train for name, _, train, _ in folds}
    members = []
    for name, path in files.items():
        model = model_from(task, load_checkpoint(path, device), device)  # the file bundled
        mean, std = task.risk_scale(model, train_of[name], device, autocast)
        members.append({"file": f"{name}.pt", "fold": name, "risk_mean": mean, "risk_std": std})
    return BundleContent(
        members=members,
        files={f"{name}.pt": path for name, path in files.items()},
        metrics={"cv": result["network"][mode]["cv"], "chain": chain,
                 "baseline_clinical_cv": result["baseline_clinical"]["cv"]},
        extra=extra,
    )  # fmt: skip
