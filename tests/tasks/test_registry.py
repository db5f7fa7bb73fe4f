"""The task registry: every stage a spec names exists in its layer, and a task declared outside
the package (here, a toy regression of total lesion volume) runs through train, crossval, register,
report and predict without a change to the package."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import Dataset

from hecktor import io, reports, tracking
from hecktor.bundle import Bundle
from hecktor.checkpoints import best_fold, load_trained, restored
from hecktor.cli import build_parser, main
from hecktor.config import Config, SegConfig
from hecktor.data.preprocess import load_prepared, prepared_grid
from hecktor.devices import resolve_device
from hecktor.tasks import TASKS, config_sections, lineage, spec_of, task_folds
from hecktor.tasks.spec import BundleContent, Outcome, PatientInputs, TaskSpec, resolve
from tests.conftest import ROOT

# --------------------------------------------------------------------------- the package's specs

STAGE_HOMES = {"build": "hecktor.tasks.", "bundle": "hecktor.tasks.",
               "predictor": "hecktor.inference.predictors:", "crossval": "hecktor.crossval.",
               "inputs": "hecktor.derive"}  # fmt: skip


@pytest.mark.parametrize("name", list(TASKS))
def test_every_stage_a_spec_names_exists_in_its_layer(name):
    spec = TASKS[name]
    for stage, home in STAGE_HOMES.items():
        target = getattr(spec, stage)
        if target is None:
            continue
        assert isinstance(target, str) and target.startswith(home), (stage, target)
        assert callable(resolve(target)), target
    assert all(up in TASKS and list(TASKS).index(up) < list(TASKS).index(name)
               for up in spec.upstream)  # fmt: skip


def test_lineage_and_config_sections_follow_the_upstream_tasks():
    assert lineage("seg") == ("seg",)
    assert lineage("rfs") == ("seg", "hpv", "rfs")
    assert config_sections("hpv") == ("profile", "prepare", "split", "seg", "hpv")
    with pytest.raises(ValueError, match=f"unknown task 'nope'; known: {', '.join(TASKS)}"):
        spec_of("nope")


# --------------------------------------------------------------------------- a toy fourth task


class _VolumeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool3d(1), nn.Flatten())  # fmt: skip
        self.head = nn.Linear(4, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image)).squeeze(-1)


class _Volumes(Dataset):
    def __init__(self, task: VolumeTask, patients: Sequence[str]) -> None:
        self.task, self.patients = task, list(patients)

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> dict:
        case = load_prepared(self.task.prepared, self.patients[index])
        return {"image": torch.as_tensor(np.asarray(case.image)),
                "target": torch.tensor(self.task.target(case.label), dtype=torch.float32)}  # fmt: skip


class VolumeTask:
    """log(1 + total lesion volume in mL) from CT and PET; Task 1's patients and settings."""

    name = "volume"

    def __init__(self, cfg: SegConfig, prepared: Path) -> None:
        self.cfg, self.prepared = cfg, Path(prepared)
        spacing, _ = prepared_grid(prepared)
        self.voxel_ml = float(np.prod(spacing)) / 1000

    def target(self, label) -> float:
        return float(np.log1p((np.asarray(label) > 0).sum() * self.voxel_ml))

    def build_model(self) -> nn.Module:
        return _VolumeNet()

    def train_dataset(self, patients):
        return _Volumes(self, patients)

    def sampler(self, dataset, seed):
        return None

    def setup(self, train_patients) -> None:
        return None

    def state(self) -> dict:
        return {}

    def warm_start(self, model) -> None:
        return None

    def loss(self, model, batch, device):
        prediction = model(batch["image"].to(device))
        return nn.functional.mse_loss(prediction.float(), batch["target"].to(device))

    def validate(self, model, patients, device, autocast) -> dict[str, float]:
        errors = []
        for patient in patients:
            case = load_prepared(self.prepared, patient)
            with torch.no_grad(), autocast():
                image = torch.as_tensor(np.asarray(case.image))[None].to(device)
                guess = float(model(image).float())
            errors.append(abs(guess - self.target(case.label)))
        mae = float(np.mean(errors))
        return {"mae": mae, "score": -mae}


def build_volume(cfg: Config, mode: str | None = None) -> VolumeTask:
    return VolumeTask(cfg.seg, cfg.paths.prepared)


def crossval_volume(cfg: Config, track: bool = True) -> dict:
    """Each fold's model against a constant (the training patients' mean) on its validation set."""
    task, device = build_volume(cfg), resolve_device("cpu")
    folds = {}
    for name, _, train_ids, val_ids in task_folds(cfg, "volume")[0]:
        model, _ = load_trained(task, Path(cfg.paths.models) / "volume" / name, device)
        mean = np.mean([task.target(load_prepared(task.prepared, p).label) for p in train_ids])
        truth = [task.target(load_prepared(task.prepared, p).label) for p in val_ids]
        folds[name] = {"network": task.validate(model, val_ids, device, nullcontext)["mae"],
                       "baseline": float(np.mean(np.abs(np.asarray(truth) - mean)))}  # fmt: skip
    network = float(np.mean([f["network"] for f in folds.values()]))
    baseline = float(np.mean([f["baseline"] for f in folds.values()]))
    result = {
        "task": "volume",
        "score": {"name": "minus the mean absolute error", "value": -network},
        "headline": [reports.headline_row("MAE of log(1 + mL)", {
            "network": network, "baseline": baseline, "network_ci": None, "baseline_ci": None,
            "difference_ci": None, "verdict": "n/a (no interval)"}, None)],
        "folds": folds,
    }  # fmt: skip
    io.write_json(Path(cfg.paths.metrics) / "volume.json", result)
    return result


def bundle_volume(cfg: Config, result: dict) -> BundleContent:
    checkpoint = best_fold(Path(cfg.paths.models) / "volume")
    assert checkpoint is not None
    return BundleContent(members=[{"file": "model.pt", "fold": checkpoint.parent.name}],
                         files={"model.pt": checkpoint}, metrics=result["folds"])  # fmt: skip


def predict_volume(bundle: Bundle, device: torch.device, autocast):
    model = restored(_VolumeNet(), bundle.weights(bundle.members[0], device), device)

    def predict(inputs: PatientInputs) -> Outcome:
        with torch.no_grad(), autocast():
            guess = float(model(torch.as_tensor(inputs.image)[None].to(device)).float())
        return Outcome({"lesion_volume_ml": float(np.expm1(guess))})

    return predict


VOLUME = TaskSpec(
    name="volume",
    challenge=1,
    title="Toy: total lesion volume",
    section="seg",
    build=build_volume,
    bundle=bundle_volume,
    predictor=predict_volume,
    crossval=crossval_volume,
    outputs={"lesion_volume_ml": "predicted total lesion volume (mL)"},
)


@pytest.fixture
def params_file(project_cfg, tmp_path, monkeypatch):
    """A params file whose paths are the scratch config's, with the toy task registered."""
    monkeypatch.setitem(TASKS, "volume", VOLUME)
    monkeypatch.delenv(tracking.ENV, raising=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {k: str(v) for k, v in project_cfg.paths.model_dump().items()}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    yield ["--params", str(path), "--profile", "tiny"]
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_a_task_declared_outside_the_package_runs_through_the_pipeline(
    params_file, project_cfg, release_dir, tmp_path, capsys
):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "volume: Toy: total lesion volume" in capsys.readouterr().out
    assert main(["train", "volume", *params_file]) == 0
    summary = json.loads((project_cfg.paths.models / "volume" / "summary.json").read_text())
    assert summary["task"] == "volume" and list(summary["folds"]) == ["holdout"]
    assert main(["crossval", "volume", *params_file]) == 0
    assert main(["register", "volume", *params_file]) == 0
    client = MlflowClient(tracking.tracking_uri(project_cfg.paths.mlruns))
    version = client.get_model_version_by_alias("hecktor-volume", "champion")
    assert str(version.version) == "1"
    assert client.get_registered_model("hecktor-volume").description == "Toy: total lesion volume"
    assert main(["report", *params_file]) == 0
    report = (project_cfg.paths.reports / "index.md").read_text()
    assert "| Toy: total lesion volume | MAE of log(1 + mL) |" in report
    out = tmp_path / "predicted"
    assert main(["predict", "--tasks", "volume", "--input", str(release_dir), "--output",
                 str(out), *params_file]) == 0  # fmt: skip
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["PatientID", "lesion_volume_ml"]
    assert len(predictions) == 8 and np.isfinite(predictions["lesion_volume_ml"]).all()
    assert not list(out.glob("*.nii.gz"))  # no task of this run segments
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks"] == ["volume"] and set(manifest["models"]) == {"volume"}
