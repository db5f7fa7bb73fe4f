"""``hecktor register``'s first half: bundle a pipeline run's trained models (see
:mod:`hecktor.bundle` for what a bundle holds; each task's spec says what it puts in it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hecktor import __version__
from hecktor.bundle import FORMAT, write_bundle
from hecktor.config import Config
from hecktor.data.preprocess import load_summary
from hecktor.errors import UserError
from hecktor.fingerprints import prepared_digest, training_code
from hecktor.tasks import TASKS, config_sections, spec_of
from hecktor.tasks.spec import TaskSpec, resolve


def _metrics(cfg: Config, spec: TaskSpec) -> dict:
    path = Path(cfg.paths.metrics) / f"{spec.name}.json"
    if not path.is_file():
        raise UserError(f"{path}: no metrics; run `hecktor crossval {spec.name}` first")
    return json.loads(path.read_text())


def build_bundle(cfg: Config, spec: TaskSpec, out: Path) -> Path:
    """One task's bundle: its spec's contents, with the config sections its models depend on,
    the prepared grid, versions, and the cross-validated score the registry ranks by."""
    result = _metrics(cfg, spec)
    content = resolve(spec.bundle)(cfg, result)
    summary = load_summary(cfg.paths.prepared)
    manifest = {
        "format": FORMAT,
        "name": spec.registry_name,
        "task": spec.name,
        "title": spec.title,
        "package_version": __version__,
        "code": training_code(),
        "data": prepared_digest(cfg.paths.prepared),
        "prepared": {k: summary[k] for k in ("spacing_mm", "shape_zyx")},
        "config": {s: getattr(cfg, s).model_dump(mode="json") for s in config_sections(spec.name)[1:]},
        "members": content.members,
        "metrics": content.metrics,
        "score": result["score"],
    } | content.extra  # fmt: skip
    return write_bundle(out, manifest, content.files)


def build_bundles(
    cfg: Config, out: Path | str, tasks: Sequence[str] | None = None
) -> dict[str, Path]:
    """Bundle the trained models of ``tasks`` (default: every task) under ``out/<registry name>``,
    in the registry's order."""
    wanted = {spec_of(t).name for t in tasks} if tasks else set(TASKS)
    specs = [spec for name, spec in TASKS.items() if name in wanted]
    return {s.name: build_bundle(cfg, s, Path(out) / s.registry_name) for s in specs}
