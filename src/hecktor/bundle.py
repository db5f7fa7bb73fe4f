"""A model bundle: what the registry stores, ``hecktor export`` writes and ``predict`` loads.

A bundle is a folder holding ``bundle.json`` (task, the config sections that rebuild the network and
its inputs, the prepared grid, cross-validated metrics and the score the registry ranks by, code and
data versions, and each member's weights file with its SHA-256) and one weights file per member
model. Weights files hold tensors and plain values only and load with
``torch.load(weights_only=True)``: loading a bundle unpickles nothing, and a weights file whose
bytes are not those recorded is refused, named. What each task puts in its bundle is declared with
the task (:mod:`hecktor.tasks`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ValidationError

from hecktor import io
from hecktor.checkpoints import load_checkpoint
from hecktor.config import Config, problems_of
from hecktor.errors import UserError
from hecktor.fingerprints import file_sha256, files_digest

MANIFEST = "bundle.json"
FORMAT = 2  # 2: each member records its weights file's SHA-256


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

    @cached_property
    def _digest(self) -> str:
        return files_digest([self.root / MANIFEST, *(self.root / m["file"] for m in self.members)])

    def digest(self) -> str:
        """Digest of the manifest and every weights file: equal bundles, equal digests. Read
        once per loaded bundle (a prediction checks and records it several times; paper-scale
        weights are hundreds of MB)."""
        return self._digest

    def verify(self, digest: str | None, source: str) -> Bundle:
        """This bundle, if its :meth:`digest` is ``digest`` as ``source`` recorded it (a registry
        version's tag, an export's ``sources.json``); else a :class:`UserError` naming both."""
        if digest is not None and self.digest() != digest:
            raise UserError(
                f"{self.root}: its files differ from those {source} recorded (bundle digest "
                f"{self.digest()}, recorded {digest}): damaged or changed; register or export "
                "the model again"
            )
        return self


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
        manifest = io.read_json(path)
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{path}: bundle format {found!r}, expected {FORMAT}; register or "
                        "export the model again with this version of hecktor")  # fmt: skip
    for member in manifest.get("members", []):
        weights = root / member["file"]
        if not weights.is_file():
            raise UserError(f"{weights}: weights file missing")
        if file_sha256(weights) != member.get("sha256"):
            raise UserError(f"{weights}: its bytes differ from those the bundle recorded "
                            f"(sha256 in {path}): damaged or changed")  # fmt: skip
    return Bundle(root, manifest)


def write_bundle(out: Path, manifest: dict, files: dict[str, Path]) -> Path:
    """Write a bundle atomically: the folder appears complete or not at all. Every weights file
    must load (a truncated or damaged one is refused, named) and is recorded with its SHA-256."""
    for src in files.values():
        load_checkpoint(src)
    with io.atomic_dir(out, "register") as tmp:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        digests = {name: file_sha256(tmp / name) for name in files}
        members = [m | {"sha256": digests[m["file"]]} for m in manifest["members"]]
        clean = io.strict(manifest | {"members": members}, out / MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps(clean, indent=1, sort_keys=True, allow_nan=False))
    return out
