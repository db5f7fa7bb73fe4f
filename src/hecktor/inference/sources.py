"""Which bundles a prediction uses and where each came from: a registry URI, an ``hecktor export``
folder or a bundle folder (:mod:`hecktor.bundle` says what a bundle holds). One bundle per task,
each task's upstream tasks included, in the registry's order (upstream first).

What was recorded of a bundle when it was registered or exported is checked when it loads: its
digest (damaged or changed files are refused, named), and the bundles of the tasks it was
registered on (a Task 3 or Task 2 model runs only on the Task 1 model it was registered with).
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

# a registered version's tag, and an export's entry: the bundle digest of each task it builds on
UPSTREAM_DIGESTS = "upstream_digests"
SOURCES = "sources.json"  # in an export: where each bundle came from, as recorded then


@dataclass(frozen=True)
class Bundles:
    """The bundles a prediction uses, by task name, with where each came from and, where it was
    recorded, the digests of the upstream bundles each was registered on."""

    bundles: dict[str, Bundle]
    sources: dict[str, str]
    versions: dict[str, str | None] = field(default_factory=dict)  # registry versions
    upstream: dict[str, dict[str, str]] = field(default_factory=dict)

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
        """Bundles must form one lineage (each on the upstream bundles it was registered with)
        and agree on every setting they share (preprocessing, the networks they build on), or
        one task's inputs would differ from what it was trained and scored on."""
        for task, digests in self.upstream.items():
            for up, digest in digests.items():
                if up in self.bundles and self.bundles[up].digest() != digest:
                    raise UserError(
                        f"{self.sources.get(task, self[task].root)} was registered on another "
                        f"{up} model than {self.sources.get(up, self[up].root)} (bundle {digest}, "
                        f"not {self.bundles[up].digest()}): predict with one lineage, the "
                        "champions after `hecktor register` or the versions registered together"
                    )
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
    ``models:/<name>@champion`` from the registry; each checked against what its registry
    version or export recorded (:meth:`Bundles.check` then checks them together)."""
    uris = uris or {}
    exported: dict = {}
    if models_dir is not None and (Path(models_dir) / SOURCES).is_file():
        try:
            exported = io.read_json(Path(models_dir) / SOURCES)
        except ValueError as err:
            raise UserError(f"{Path(models_dir) / SOURCES}: unreadable ({err})") from None
    loaded, sources, versions, upstream = {}, {}, {}, {}
    for task in requested(tasks):
        name = TASKS[task].registry_name
        uri = uris.get(task) or (
            str(Path(models_dir) / name) if models_dir is not None else f"models:/{name}@champion"
        )
        try:
            fetched = fetch_bundle(uri, Path(cache) / name, mlruns)
        except MlflowException as err:
            raise UserError(
                f"{uri}: not found in the MLflow store ({err.message}); run `hecktor register` "
                "(or `dvc repro`) first, or give --models"
            ) from None
        bundle = load_bundle(bundle_folder(fetched.path))
        if fetched.version is not None:
            sources[task] = f"{uri} (version {fetched.version})"
            versions[task] = fetched.version
            recorded = fetched.tags
        elif task in exported and not uris.get(task):
            sources[task] = exported[task]["source"]
            versions[task] = exported[task]["version"]
            recorded = exported[task]
        else:
            sources[task], versions[task], recorded = uri, None, {}
        loaded[task] = bundle.verify(recorded.get("bundle_digest"), sources[task])
        digests = recorded.get(UPSTREAM_DIGESTS) or {}
        upstream[task] = json.loads(digests) if isinstance(digests, str) else dict(digests)
    found = Bundles(loaded, sources, versions, upstream)
    found.check()
    return found


def export_bundles(bundles: Bundles, out: Path | str) -> Path:
    """Copy the bundles into ``out/<name>/`` with ``sources.json`` (where each came from, its
    registry version, its digest and those of the bundles it was registered on). ``out`` must
    not hold anything but an earlier export."""
    out = Path(out)
    with io.atomic_dir(out, "export", [b.root for b in bundles.bundles.values()]) as tmp:
        for task, bundle in bundles.bundles.items():
            shutil.copytree(bundle.root, tmp / TASKS[task].registry_name)
        described = {
            task: {
                "source": bundles.sources[task],
                "version": bundles.versions.get(task),
                "bundle_digest": bundle.digest(),
                UPSTREAM_DIGESTS: bundles.upstream.get(task, {}),
            }
            for task, bundle in bundles.bundles.items()
        }
        io.write_json(tmp / SOURCES, described)
    return out
