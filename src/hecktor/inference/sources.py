"""Which bundles a prediction uses and where each came from: a registry URI, an ``hecktor export``
folder or a bundle folder (:mod:`hecktor.bundle` says what a bundle holds). One bundle per task,
each task's upstream tasks included, in the registry's order (upstream first).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException

from hecktor import io
from hecktor.bundle import Bundle, bundle_folder, load_bundle
from hecktor.errors import UserError
from hecktor.tasks import TASKS, lineage
from hecktor.tracking import fetch_bundle


@dataclass(frozen=True)
class Bundles:
    """The bundles a prediction uses, by task name, with where each came from."""

    bundles: dict[str, Bundle]
    sources: dict[str, str]
    versions: dict[str, str | None] = field(default_factory=dict)  # registry versions

    def __getitem__(self, task: str) -> Bundle:
        return self.bundles[task]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.bundles)

    def describe(self) -> dict[str, dict]:
        return {
            task: {
                "name": bundle.manifest["name"],
                "source": self.sources.get(task, str(bundle.root)),
                "version": self.versions.get(task),
                "digest": bundle.digest(),
                "score": bundle.manifest.get("score"),
                "code": bundle.manifest.get("code"),
                "data": bundle.manifest.get("data"),
            }
            for task, bundle in self.bundles.items()
        }

    def check(self) -> None:
        """Bundles must agree on every setting they share (preprocessing, the networks they
        build on), or one task's inputs would differ from what it was trained on."""
        first: dict[str, Bundle] = {}
        for bundle in self.bundles.values():
            for section, settings in bundle.manifest["config"].items():
                other = first.setdefault(section, bundle)
                if other.manifest["config"][section] != settings:
                    raise UserError(
                        f"{bundle.root}: its {section!r} settings differ from {other.root}'s; "
                        "use models from one pipeline run"
                    )


def requested(tasks: Iterable[str] | None = None) -> tuple[str, ...]:
    """The tasks a prediction of ``tasks`` (default: every task) runs: with their upstream."""
    wanted = set(tasks or TASKS)
    unknown = sorted(wanted - set(TASKS))
    if unknown:
        raise UserError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    needed = {t for name in wanted for t in lineage(name)}
    return tuple(t for t in TASKS if t in needed)


def load_bundles(
    mlruns: Path | str,
    cache: Path | str,
    models_dir: Path | str | None = None,
    uris: dict[str, str | None] | None = None,
    tasks: Iterable[str] | None = None,
) -> Bundles:
    """The bundles of ``tasks`` (default: every task) and their upstream tasks: each from its URI
    if given, else from ``models_dir`` (an ``hecktor export`` folder), else
    ``models:/<name>@champion`` from the registry."""
    uris = uris or {}
    exported: dict = {}
    if models_dir is not None and (Path(models_dir) / "sources.json").is_file():
        exported = json.loads((Path(models_dir) / "sources.json").read_text())
    loaded, sources, versions = {}, {}, {}
    for task in requested(tasks):
        name = TASKS[task].registry_name
        uri = uris.get(task) or (
            str(Path(models_dir) / name) if models_dir is not None else f"models:/{name}@champion"
        )
        try:
            path, version = fetch_bundle(uri, Path(cache) / name, mlruns)
        except MlflowException as err:
            raise UserError(
                f"{uri}: not found in the MLflow store ({err.message}); run `hecktor register` "
                "(or `dvc repro`) first, or give --models"
            ) from None
        loaded[task] = load_bundle(bundle_folder(path))
        if task in exported:
            sources[task] = exported[task]["source"]
            versions[task] = exported[task]["version"]
        else:
            sources[task] = uri if version is None else f"{uri} (version {version})"
            versions[task] = None if version is None else str(version)
    return Bundles(loaded, sources, versions)


def export_bundles(bundles: Bundles, out: Path | str) -> Path:
    """Copy the bundles into ``out/<name>/`` with ``sources.json`` (where each came from, and
    its registry version). ``out`` must not hold anything but an earlier export."""
    out = Path(out)
    with io.atomic_dir(out, "export", [b.root for b in bundles.bundles.values()]) as tmp:
        for task, bundle in bundles.bundles.items():
            shutil.copytree(bundle.root, tmp / TASKS[task].registry_name)
        described = {
            task: {"source": bundles.sources[task], "version": bundles.versions.get(task)}
            for task in bundles.tasks
        }
        (tmp / "sources.json").write_text(json.dumps(described, indent=1, sort_keys=True))
    return out
