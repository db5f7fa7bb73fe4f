"""Task 2's inputs as the paper used them at test time: masks from the Task 1 model and HPV status
from the Task 3 models, produced out of fold wherever the splits allow.

* Masks: a patient is segmented by a Task 1 fold model that did not train on them; when every Task 1
  model saw them (the hold-out split trains one model on most patients), the mask is in-sample and is
  marked so (``seg_source``).
* HPV: a patient in a Task 3 validation fold gets that fold model's logit; anyone else (the Task 3
  test set, patients outside Task 3) gets the fold ensemble's mean logit: never in-sample.
* HPV as the paper's Task 2 submission took it (``hpv_single_*``): from one Task 3 fold model, the
  one with the best balanced accuracy on its validation patients (``single_fold.json``), for the
  patients no fold trained on; out of fold, as above, for the others.

Written once per set of models to ``<models>/rfs_inputs`` (masks on the prepared grid); the
``derive`` stage makes them, so that tuning and training Task 2 share them. Their key covers the
weights, the cohort and the code that computes them (the training code and this module, where the
Task 3 fold logits that scoring also reports are computed), not the reports' wording.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from tqdm import tqdm

from hecktor import io, metrics
from hecktor.checkpoints import load_checkpoint, load_trained, model_from, trained_checkpoint
from hecktor.config import Config
from hecktor.data.folds import folds_of, load_splits
from hecktor.data.preprocess import load_prepared
from hecktor.data.splits import fold_predictions
from hecktor.devices import autocast_for, precision_for, resolve_device
from hecktor.fingerprints import files_digest, training_code
from hecktor.lesions import remove_small_lesions
from hecktor.tasks import task_folds
from hecktor.tasks.hpv import HPVTask
from hecktor.tasks.rfs import SINGLE_FOLD, rfs_inputs_dir
from hecktor.tasks.seg import SegmentationTask

log = logging.getLogger(__name__)


@dataclass
class FoldModel:
    name: str
    kind: str  # "kfold" or "loco"
    train: list[str]
    val: list[str]
    model: nn.Module
    encoder: dict


def load_models(cfg: Config, task: HPVTask) -> list[FoldModel]:
    """Every trained Task 3 fold model (its final weights) with its clinical encoder."""
    device = resolve_device(cfg.hpv.train.device)
    folds, _ = task_folds(cfg, "hpv")
    out = []
    for name, kind, train_ids, val_ids in folds:
        model, state = load_trained(task, Path(cfg.paths.models) / "hpv" / name, device)
        out.append(FoldModel(name, kind, train_ids, val_ids, model, state["task"]["encoder"]))
    return out


def logits_of(
    cfg: Config, task: HPVTask, models: Sequence[FoldModel], unknown: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Out-of-fold logits (one row per validation patient) and test logits (every fold x patient)."""
    device = resolve_device(cfg.hpv.train.device)
    autocast = autocast_for(precision_for(cfg.hpv.train.precision, device), device)
    _, test = task_folds(cfg, "hpv")
    by_name = {m.name: m for m in models}

    def fit(fold: tuple[str, str, list[str], list[str]]):
        model = by_name[fold[0]]
        task.load_state({"encoder": model.encoder})
        return lambda patients: task.logits(model.model, patients, device, autocast, unknown)

    return fold_predictions([(m.name, m.kind, m.train, m.val) for m in models], test, fit, "logit")


def best_single_fold(oof: pd.DataFrame, truth: pd.Series) -> tuple[str, float]:
    """The Task 3 fold whose model classifies its validation patients best (balanced accuracy,
    then AUC, as training selects), and that accuracy."""

    def score(rows: pd.DataFrame) -> tuple[float, float]:
        known = truth.loc[rows["PatientID"]].notna().to_numpy()
        labels = truth.loc[rows["PatientID"]].to_numpy()[known].astype(int)
        logits = rows["logit"].to_numpy()[known]
        auc = metrics.auc(labels, logits)
        return metrics.balanced_accuracy(labels, (logits > 0).astype(int)), np.nan_to_num(auc)

    scores = {fold: score(rows) for fold, rows in oof.groupby("fold", sort=False)}
    best = max(scores, key=lambda fold: scores[fold])  # the first of equals, in fold order
    return str(best), float(scores[best][0])


def _sources(cfg: Config) -> tuple[list[tuple[str, set[str], Path]], str]:
    """The Task 1 fold models (name, training patients, weights) and the key of what the inputs
    derive from: the weights the models load, the cohort and this code."""
    seg_root = Path(cfg.paths.models) / "seg"
    seg_summary = json.loads((seg_root / "summary.json").read_text())
    splits = load_splits(cfg.paths.splits)
    seg_folds = [
        (name, set(train_ids), trained_checkpoint(seg_root / name))
        for name, train_ids, _ in folds_of(splits, "task1", cfg.seg.split, cfg.seg.folds)
        if name in seg_summary["folds"]
    ]
    # the weights the HPV fold models load (SWA when it ran): a new SWA result must remake the inputs
    hpv_paths = [
        trained_checkpoint(Path(cfg.paths.models, "hpv", name))
        for name, *_ in task_folds(cfg, "hpv")[0]
    ]
    weights = files_digest(
        [p for _, _, p in seg_folds] + hpv_paths + [Path(cfg.paths.prepared) / "cases.csv"]
    )
    return seg_folds, f"{weights}:{training_code(('derive.py',))}"


def derive_rfs_inputs(cfg: Config) -> Path:
    """Predicted masks and HPV logits for every Task 2 patient; returns the folder."""
    out = rfs_inputs_dir(cfg)
    seg_folds, key = _sources(cfg)
    if (
        (out / "inputs.csv").is_file()
        and (out / "key.txt").is_file()
        and (out / "key.txt").read_text() == key
    ):
        return out
    cases = pd.read_csv(Path(cfg.paths.prepared) / "cases.csv")
    patients = cases.loc[cases["task2"], "PatientID"].tolist()
    device = resolve_device(cfg.seg.train.device)
    autocast = autocast_for(precision_for(cfg.seg.train.precision, device), device)
    seg_task = SegmentationTask(cfg.seg, cfg.paths.prepared)
    models = {name: model_from(seg_task, load_checkpoint(path, device), device)
              for name, _, path in seg_folds}  # fmt: skip
    hpv_task = HPVTask(cfg.hpv, cfg.seg, cfg.paths.prepared)
    hpv_models = [m for m in load_models(cfg, hpv_task) if m.kind == "kfold"]
    oof, _ = logits_of(cfg, hpv_task, hpv_models)
    oof_logit = dict(zip(oof["PatientID"], oof["logit"], strict=True))
    single, single_accuracy = best_single_fold(oof, hpv_task.table["HPV Status"])
    rows = []
    with io.atomic_dir(out, "derive rfs") as tmp:
        (tmp / "masks").mkdir()
        others = [p for p in patients if p not in oof_logit]
        ensemble: dict[str, list[float]] = {}
        single_logit = dict(oof_logit)
        if others:
            for fold in hpv_models:
                hpv_task.load_state({"encoder": fold.encoder})
                values = hpv_task.logits(fold.model, others, device, autocast)
                for p, v in zip(others, values, strict=True):
                    ensemble.setdefault(p, []).append(v)
                    if fold.name == single:
                        single_logit[p] = v
        for patient in tqdm(patients, desc="rfs inputs", unit="patient"):
            unseen = [name for name, train, _ in seg_folds if patient not in train]
            fold = unseen[0] if unseen else seg_folds[0][0]
            case = load_prepared(cfg.paths.prepared, patient)
            labels = seg_task.predict(models[fold], case.image, device, autocast)
            labels = remove_small_lesions(labels, cfg.seg.min_lesion_mm3, seg_task.voxel_mm3)
            np.save(tmp / "masks" / f"{patient}.npy", labels)
            logit = oof_logit.get(patient, float(np.mean(ensemble.get(patient, [0.0]))))
            alone = float(single_logit.get(patient, 0.0))
            rows.append({
                "PatientID": patient, "hpv_logit": logit, "hpv_pred": int(logit > 0),
                "hpv_single_logit": alone, "hpv_single_pred": int(alone > 0),
                "seg_source": "out-of-fold" if unseen else "in-sample",
                "hpv_source": "out-of-fold" if patient in oof_logit else "ensemble",
            })  # fmt: skip
        pd.DataFrame(rows).to_csv(tmp / "inputs.csv", index=False)
        io.write_json(tmp / SINGLE_FOLD, {"fold": single, "balanced_accuracy": single_accuracy})
        (tmp / "key.txt").write_text(key)
    frame = pd.DataFrame(rows)
    log.info("Task 2 inputs: masks %s; HPV %s", frame["seg_source"].value_counts().to_dict(),
             frame["hpv_source"].value_counts().to_dict())  # fmt: skip
    return out
