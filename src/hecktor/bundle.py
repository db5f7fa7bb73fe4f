"""A model bundle: what the registry stores, ``hecktor export`` writes and ``predict`` loads.

A bundle is a folder holding ``bundle.json`` (task, the config sections that rebuild the network and
its inputs, the prepared grid, cross-validated metrics and the score the registry ranks by, code and
data versions) and one weights file per member model. Weights files hold tensors and plain values
only and load with ``torch.load(weights_only=True)``: loading a bundle unpickles nothing. What each
task puts in its bundle is declared with the task (:mod:`hecktor.tasks`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ValidationError

from hecktor import io
from hecktor.checkpoints import load_checkpoint
from hecktor.config import Config, problems_of
from hecktor.errors import UserError
from hecktor.fingerprints import files_digest

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

    def settings(self, section: str) -> Any:
        """A config section as the bundled models were trained with it (e.g. ``prepare``)."""
        model: type[BaseModel] = Config.model_fields[section].annotation  # type: ignore[assignment]
        return model.model_validate(self.manifest["config"][section])

    def with_settings(self, section: str, **values: Any) -> Bundle:
        """The same bundle with some settings of a config section replaced (``predict``'s
        options, such as the sliding window's overlap): validated as the params file is."""
        settings = self.settings(section)
        try:
            checked = type(settings).model_validate(settings.model_dump() | values)
        except ValidationError as err:
            raise UserError("; ".join(problems_of(err, section))) from None
        config = self.manifest["config"] | {section: checked.model_dump(mode="json")}
        return Bundle(self.root, self.manifest | {"config": config})

    @property
    def members(self) -> list[dict[str, Any]]:
        return list(self.manifest["members"])

    def weights(self, member: dict[str, Any], device: torch.device | str = "cpu") -> dict:
        return load_checkpoint(self.root / member["file"], device)

    def digest(self) -> str:
        """Digest of the manifest and every weights file: equal bundles, equal digests."""
        return files_digest([self.root / MANIFEST, *(self.root / m["file"] for m in self.members)])


def bundle_folder(path: Path) -> Path:
    """The bundle in ``path``: the folder itself, or the one an MLflow model folder holds (the
    registry's form, :mod:`hecktor.inference.pyfunc`)."""
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        return path
    flavor = (
        (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    )
    inside = (flavor.get("artifacts") or {}).get("bundle", {}).get("path")
    if inside is None:
        raise UserError(f"{path}: an MLflow model without a hecktor bundle")
    return path / inside


def load_bundle(root: Path | str) -> Bundle:
    """Read and check a bundle folder; a wrong or incomplete one fails with the file named."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{root}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: bundle format {manifest.get('format')!r}, expected {FORMAT}")
    for member in manifest.get("members", []):
        if not (root / member["file"]).is_file():
            raise UserError(f"{root / member['file']}: weights file missing")
    return Bundle(root, manifest)


def write_bundle(out: Path, manifest: dict, files: dict[str, Path]) -> Path:
    """Write a bundle atomically: the folder appears complete or not at all."""
    with io.atomic_dir(out, "register") as tmp:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        clean = io.strict(manifest, out / MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps(clean, indent=1, sort_keys=True, allow_nan=False))
    return out
