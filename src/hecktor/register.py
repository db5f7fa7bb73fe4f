"""``hecktor register``'s first half: bundle a pipeline run's trained models (see
:mod:`hecktor.inference.bundle` for what a bundle holds and how ``predict`` loads it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hecktor import __version__, io
from hecktor.checkpoints import best_fold, load_checkpoint, model_from, trained_checkpoint
from hecktor.config import Config
from hecktor.data.splits import task_folds
from hecktor.devices import autocast_for, precision_for, resolve_device
from hecktor.fingerprints import prepared_digest, training_code
from hecktor.inference.bundle import FORMAT, MANIFEST, NAMES
from hecktor.tasks import RFSTask, rfs_inputs_dir


def _write(out: Path, manifest: dict, files: dict[str, Path]) -> Path:
    """Write a bundle atomically: the folder appears complete or not at all."""
    with io.atomic_dir(out, "register") as tmp:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        clean = io.strict(manifest, out / MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps(clean, indent=1, sort_keys=True, allow_nan=False))
    return out


def _common(cfg: Config, task: str, sections: tuple[str, ...]) -> dict:
    summary = json.loads((Path(cfg.paths.prepared) / "summary.json").read_text())
    return {
        "format": FORMAT,
        "name": NAMES[task],
        "task": task,
        "package_version": __version__,
        "code": training_code(),
        "data": prepared_digest(cfg.paths.prepared),
        "prepared": {k: summary[k] for k in ("spacing_mm", "shape_zyx")},
        "config": {s: getattr(cfg, s).model_dump(mode="json") for s in ("prepare", *sections)},
    }


def _metrics(cfg: Config, task: str) -> dict:
    path = Path(cfg.paths.metrics) / f"{task}.json"
    if not path.is_file():
        raise ValueError(f"{path}: no metrics; run `hecktor crossval {task}` first")
    return json.loads(path.read_text())


def build_seg(cfg: Config, out: Path) -> Path:
    checkpoint = best_fold(Path(cfg.paths.models) / "seg")
    if checkpoint is None:
        raise ValueError(f"{cfg.paths.models}/seg: no trained model; run `hecktor train seg`")
    result = _metrics(cfg, "seg")
    network = result["variants"][result["network"]]
    manifest = _common(cfg, "seg", ("seg",)) | {
        "members": [{"file": "model.pt", "fold": checkpoint.parent.name}],
        "metrics": {"holdout": network, "baseline": result["variants"].get("baseline")},
        "score": {"name": "score (mean of GTVp DSC, GTVn DSCagg, GTVn F1agg)",
                  "value": io.figure(network["score"])},
    }  # fmt: skip
    return _write(out, manifest, {"model.pt": checkpoint})


def _fold_files(cfg: Config, task: str, prefix: str = "") -> list[tuple[str, Path]]:
    folds, _ = task_folds(cfg, task)
    files = []
    for name, kind, _, _ in folds:
        if kind != "kfold":
            continue
        files.append((name, trained_checkpoint(Path(cfg.paths.models) / task / f"{prefix}{name}")))
    if not files:
        raise ValueError(f"{task}: no k-fold models to bundle")
    return files


def build_hpv(cfg: Config, out: Path) -> Path:
    result = _metrics(cfg, "hpv")
    files = _fold_files(cfg, "hpv")
    cv = result["network"]["cv"]
    manifest = _common(cfg, "hpv", ("seg", "hpv")) | {
        "members": [{"file": f"{name}.pt", "fold": name} for name, _ in files],
        "metrics": {"cv": cv, "test_ensemble": result["network"].get("test_ensemble"),
                    "baseline_cv": result["baseline"]["cv"]},
        "score": {"name": "cross-validated balanced accuracy", "value": io.figure(cv["balanced_accuracy"])},
        "threshold": "logit > 0",
    }  # fmt: skip
    return _write(out, manifest, {f"{name}.pt": path for name, path in files})


def build_rfs(cfg: Config, out: Path) -> Path:
    result = _metrics(cfg, "rfs")
    mode = "pred" if "pred" in cfg.rfs.modes else cfg.rfs.modes[0]
    files = _fold_files(cfg, "rfs", f"{mode}-")
    task = RFSTask(cfg.rfs, cfg.paths.prepared, rfs_inputs_dir(cfg), mode)
    device = resolve_device(cfg.rfs.train.device)
    autocast = autocast_for(precision_for(cfg.rfs.train.precision, device), device)
    train_of = {name: train for name, _, train, _ in task_folds(cfg, "rfs")[0]}
    members = []
    for name, path in files:
        model = model_from(task, load_checkpoint(path, device), device)  # the file bundled
        mean, std = task.risk_scale(model, train_of[name], device, autocast)
        members.append({"file": f"{name}.pt", "fold": name, "risk_mean": mean, "risk_std": std})
    cv = result["network"][mode]["cv"]
    manifest = _common(cfg, "rfs", ("seg", "rfs")) | {
        "members": members,
        "mode": mode,
        "metrics": {"cv": cv, "test_ensemble": result["network"][mode].get("test_ensemble"),
                    "baseline_clinical_cv": result["baseline_clinical"]["cv"]},
        "score": {"name": "cross-validated C-index", "value": io.figure(cv["c_index"])},
    }  # fmt: skip
    return _write(out, manifest, {f"{name}.pt": path for name, path in files})


BUILDERS = {"seg": build_seg, "hpv": build_hpv, "rfs": build_rfs}


def build_bundles(cfg: Config, out: Path | str) -> dict[str, Path]:
    """Bundle the trained models of the three tasks under ``out/<name>``."""
    out = Path(out)
    return {task: build(cfg, out / NAMES[task]) for task, build in BUILDERS.items()}
