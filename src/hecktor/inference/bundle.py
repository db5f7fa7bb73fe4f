"""Model bundles: what the registry stores, ``hecktor export`` writes and ``predict`` loads.

A bundle is a folder holding ``bundle.json`` (task, the config sections that rebuild the network and
its inputs, the prepared grid, cross-validated metrics and the score the registry ranks by, code and
data versions) and one weights file per member model. Weights files hold tensors and plain values
only and load with ``torch.load(weights_only=True)``: loading a bundle unpickles nothing.

* ``hecktor-seg``: the Task 1 network after SWA (the best fold's when several were trained).
* ``hecktor-hpv``: the Task 3 fold ensemble (mean logit), with each fold's clinical encoder.
* ``hecktor-rfs``: the Task 2 fold ensemble trained on predicted inputs (what a new patient has),
  with each fold's clinical encoder and the mean and spread of its training patients' risks, by
  which fold risks are standardised before they are averaged (as in cross-validation).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hecktor import __version__, io
from hecktor.checkpoints import load_checkpoint, model_from, trained_checkpoint
from hecktor.config import Config, HpvConfig, PrepareConfig, RfsConfig, SegConfig
from hecktor.devices import autocast_for, precision_for, resolve_device

NAMES = {"seg": "hecktor-seg", "hpv": "hecktor-hpv", "rfs": "hecktor-rfs"}
MANIFEST = "bundle.json"
FORMAT = 1


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle's manifest and where its files are."""

    root: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def prepare(self) -> PrepareConfig:
        return PrepareConfig.model_validate(self.manifest["config"]["prepare"])

    @property
    def seg(self) -> SegConfig:
        return SegConfig.model_validate(self.manifest["config"]["seg"])

    @property
    def hpv(self) -> HpvConfig:
        return HpvConfig.model_validate(self.manifest["config"]["hpv"])

    @property
    def rfs(self) -> RfsConfig:
        return RfsConfig.model_validate(self.manifest["config"]["rfs"])

    @property
    def members(self) -> list[dict[str, Any]]:
        return list(self.manifest["members"])

    def weights(self, member: dict[str, Any], device: torch.device | str = "cpu") -> dict:
        return torch.load(self.root / member["file"], map_location=device, weights_only=True)

    def digest(self) -> str:
        """Hash of the manifest and every weights file: equal bundles, equal digests."""
        h = hashlib.sha256((self.root / MANIFEST).read_bytes())
        for member in self.members:
            h.update((self.root / member["file"]).read_bytes())
        return h.hexdigest()[:16]


def load_bundle(root: Path | str) -> Bundle:
    """Read and check a bundle folder; a wrong or incomplete one fails with the file named."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"{root}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: bundle format {manifest.get('format')!r}, expected {FORMAT}")
    for member in manifest.get("members", []):
        if not (root / member["file"]).is_file():
            raise ValueError(f"{root / member['file']}: weights file missing")
    return Bundle(root, manifest)


def _write(out: Path, manifest: dict, files: dict[str, Path]) -> Path:
    """Write a bundle atomically: the folder appears complete or not at all."""
    with io.atomic_dir(out, "register") as tmp:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        clean = io.strict(manifest, out / MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps(clean, indent=1, sort_keys=True, allow_nan=False))
    return out


def _common(cfg: Config, task: str, sections: tuple[str, ...]) -> dict:
    from hecktor.training.workflow import code_fingerprint, data_fingerprint

    summary = json.loads((Path(cfg.paths.prepared) / "summary.json").read_text())
    return {
        "format": FORMAT,
        "name": NAMES[task],
        "task": task,
        "package_version": __version__,
        "code": code_fingerprint(),
        "data": data_fingerprint(cfg.paths.prepared),
        "prepared": {k: summary[k] for k in ("spacing_mm", "shape_zyx")},
        "config": {s: getattr(cfg, s).model_dump(mode="json") for s in ("prepare", *sections)},
    }


def _metrics(cfg: Config, task: str) -> dict:
    path = Path(cfg.paths.metrics) / f"{task}.json"
    if not path.is_file():
        raise ValueError(f"{path}: no metrics; run `hecktor crossval {task}` first")
    return json.loads(path.read_text())


def build_seg(cfg: Config, out: Path) -> Path:
    from hecktor.training.tasks import seg_checkpoint

    checkpoint = seg_checkpoint(cfg.paths.models)
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
    from hecktor.training.workflow import task_folds

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
    from hecktor.crossval.rfs import risk_scale
    from hecktor.inference.derived import derive_rfs_inputs
    from hecktor.training.tasks import RFSTask
    from hecktor.training.workflow import task_folds

    result = _metrics(cfg, "rfs")
    mode = "pred" if "pred" in cfg.rfs.modes else cfg.rfs.modes[0]
    files = _fold_files(cfg, "rfs", f"{mode}-")
    task = RFSTask(cfg.rfs, cfg.paths.prepared, derive_rfs_inputs(cfg), mode)
    device = resolve_device(cfg.rfs.train.device)
    autocast = autocast_for(precision_for(cfg.rfs.train.precision, device), device)
    train_of = {name: train for name, _, train, _ in task_folds(cfg, "rfs")[0]}
    members = []
    for name, path in files:
        model = model_from(task, load_checkpoint(path, device), device)  # the file bundled
        mean, std = risk_scale(task, model, train_of[name], device, autocast)
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


def load_bundles(
    mlruns: Path | str,
    cache: Path | str,
    models_dir: Path | str | None = None,
    uris: dict[str, str | None] | None = None,
):
    """The three bundles ``predict`` uses: each from its URI if given, else from ``models_dir``
    (an ``hecktor export`` folder), else ``models:/<name>@champion`` from the registry."""
    from mlflow.exceptions import MlflowException

    from hecktor.inference.batch import Bundles
    from hecktor.tracking import fetch_bundle

    uris = uris or {}
    exported: dict = {}
    if models_dir is not None and (Path(models_dir) / "sources.json").is_file():
        exported = json.loads((Path(models_dir) / "sources.json").read_text())
    loaded, sources, versions = {}, {}, {}
    for task, name in NAMES.items():
        uri = uris.get(task) or (
            str(Path(models_dir) / name) if models_dir is not None else f"models:/{name}@champion"
        )
        try:
            path, version = fetch_bundle(uri, Path(cache) / name, mlruns)
        except MlflowException as err:
            raise ValueError(
                f"{uri}: not found in the MLflow store ({err.message}); run `hecktor register` "
                "(or `dvc repro`) first, or give --models"
            ) from None
        loaded[task] = load_bundle(path)
        if task in exported:
            sources[task] = exported[task]["source"]
            versions[task] = exported[task]["version"]
        else:
            sources[task] = uri if version is None else f"{uri} (version {version})"
            versions[task] = None if version is None else str(version)
    return Bundles(loaded["seg"], loaded["hpv"], loaded["rfs"], sources, versions)


def export_bundles(bundles, out: Path | str) -> Path:
    """Copy the bundles into ``out/<name>/`` with ``sources.json`` (where each came from, and
    its registry version). ``out`` must not hold anything but an earlier export."""
    out = Path(out)
    inputs = [getattr(bundles, task).root for task in NAMES]
    with io.atomic_dir(out, "export", inputs) as tmp:
        for task in NAMES:
            bundle: Bundle = getattr(bundles, task)
            shutil.copytree(bundle.root, tmp / NAMES[task])
        described = {
            task: {"source": bundles.sources[task], "version": bundles.versions.get(task)}
            for task in NAMES
        }
        (tmp / "sources.json").write_text(json.dumps(described, indent=1, sort_keys=True))
    return out
