"""Model bundles: what the registry stores, ``hecktor export`` writes and ``predict`` loads
(:mod:`hecktor.register` builds them from a pipeline run).

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

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.exceptions import MlflowException

from hecktor import io
from hecktor.checkpoints import load_checkpoint
from hecktor.config import HpvConfig, PrepareConfig, RfsConfig, SegConfig
from hecktor.fingerprints import files_digest
from hecktor.tracking import fetch_bundle

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
        return load_checkpoint(self.root / member["file"], device)

    def digest(self) -> str:
        """Digest of the manifest and every weights file: equal bundles, equal digests."""
        return files_digest([self.root / MANIFEST, *(self.root / m["file"] for m in self.members)])


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


@dataclass(frozen=True)
class Bundles:
    """The three models a prediction uses, with where each came from."""

    seg: Bundle
    hpv: Bundle
    rfs: Bundle
    sources: dict[str, str]
    versions: dict[str, str | None] = field(default_factory=dict)  # registry versions

    def describe(self) -> dict[str, dict]:
        out = {}
        for task in ("seg", "hpv", "rfs"):
            bundle: Bundle = getattr(self, task)
            out[task] = {
                "name": bundle.manifest["name"],
                "source": self.sources.get(task, str(bundle.root)),
                "version": self.versions.get(task),
                "digest": bundle.digest(),
                "score": bundle.manifest.get("score"),
                "code": bundle.manifest.get("code"),
                "data": bundle.manifest.get("data"),
            }
        return out

    def check(self) -> None:
        """The three must agree on preprocessing and on Task 1's network, or inputs would differ."""
        for task in ("hpv", "rfs"):
            other: Bundle = getattr(self, task)
            for key in ("prepare", "seg"):
                if other.manifest["config"][key] != self.seg.manifest["config"][key]:
                    raise ValueError(
                        f"{other.root}: its {key!r} settings differ from {self.seg.root}'s; "
                        "use models from one pipeline run"
                    )


def load_bundles(
    mlruns: Path | str,
    cache: Path | str,
    models_dir: Path | str | None = None,
    uris: dict[str, str | None] | None = None,
):
    """The three bundles ``predict`` uses: each from its URI if given, else from ``models_dir``
    (an ``hecktor export`` folder), else ``models:/<name>@champion`` from the registry."""
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
