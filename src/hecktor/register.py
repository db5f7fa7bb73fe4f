"""``hecktor register``: bundle a pipeline run's trained models (see :mod:`hecktor.bundle` for what
a bundle holds; each task's spec says what it puts in it) and register each as an MLflow model
(:mod:`hecktor.inference.pyfunc`), linked to the runs that trained and scored it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hecktor import __version__, io, tracking
from hecktor.bundle import FORMAT, Bundle, load_bundle, write_bundle
from hecktor.config import Config
from hecktor.data.preprocess import load_summary
from hecktor.errors import UserError
from hecktor.fingerprints import file_sha256, prepared_digest, training_code
from hecktor.inference.pyfunc import save_model
from hecktor.inference.sources import UPSTREAM_DIGESTS
from hecktor.tasks import TASKS, config_sections, lineage, spec_of
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


# --------------------------------------------------------------------------- the MLflow registry

# what a registered model needs installed beside this package to load (see its python_env.yaml)
_REQUIREMENTS = (
    "torch",
    "monai",
    "SimpleITK",
    "nibabel",
    "numpy",
    "pandas",
    "blosc2",
    "mlflow-skinny",
)


def requirements() -> list[str]:
    """This package and what its models need, at the versions installed here."""
    found = [f"hecktor=={__version__}"]
    for name in _REQUIREMENTS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(name)
    return found


@dataclass(frozen=True)
class Sources:
    """The runs a registered model comes from: the evaluation that scored it (its source run),
    and the training run of each member (by fold)."""

    evaluation: str | None = None
    training: dict[str, str] = field(default_factory=dict)


def sources_of(cfg: Config, bundle: Bundle) -> Sources:
    """Find the runs that made ``bundle`` in the task's experiment: the evaluation run tagged
    with the digest of ``metrics/<task>.json``, and each member's training run tagged with the
    digest of its weights file. Runs not tracked (``--no-track``) are simply not named."""
    client = MlflowClient(tracking.open_store(cfg.paths.mlruns))
    experiment = client.get_experiment_by_name(bundle.manifest["name"])
    if experiment is None:
        return Sources()

    def latest(tag: str, value: str) -> str | None:
        found = client.search_runs([experiment.experiment_id], f"tags.{tag} = '{value}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
        return found[0].info.run_id if found else None

    metrics = Path(cfg.paths.metrics) / f"{bundle.task}.json"
    evaluation = latest(tracking.METRICS_TAG, file_sha256(metrics)) if metrics.is_file() else None
    training = {}
    for member in bundle.members:
        run = latest(tracking.WEIGHTS_TAG, file_sha256(bundle.root / member["file"]))
        if run is not None:
            training[str(member["fold"])] = run
    return Sources(evaluation, training)


def register_model(bundle: Bundle, mlruns: Path | str, tags: dict[str, str],
                   upstream: dict[str, str] | None = None, sources: Sources | None = None,
                   ) -> dict[str, str]:  # fmt: skip
    """Log ``bundle`` as an MLflow model (:mod:`hecktor.inference.pyfunc`) chained to the
    ``upstream`` versions (``{"seg": "models:/hecktor-seg/3"}``), register it as a new version
    unless an identical one exists, and apply :func:`~hecktor.tracking.promote`.

    The model is logged once, from the evaluation run that scored it (else from a
    ``register_<task>`` run), and its version names the training runs of its members. Returns
    the name, version, alias, score and model URI.
    """
    upstream, sources = dict(upstream or {}), sources or Sources()
    experiment_id = tracking.experiment(bundle.manifest["name"], mlruns)
    client = MlflowClient()
    name = bundle.manifest["name"]
    identity = {"bundle_digest": bundle.digest(), "upstream": json.dumps(upstream, sort_keys=True)}
    score = io.figure(bundle.manifest["score"]["value"])
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=bundle.manifest.get("title", ""))
    same = [v for v in client.search_model_versions(f"name='{name}'")
            if all(v.tags.get(k) == value for k, value in identity.items())]  # fmt: skip
    if same:
        version = max(same, key=lambda v: int(v.version))
    else:
        version = _new_version(client, bundle, experiment_id, tags, upstream, sources,
                               identity | {"cv_score": repr(score)})  # fmt: skip
    alias = tracking.promote(client, name, version.version, score, bundle.manifest["data"])
    return {"name": name, "version": str(version.version), "alias": alias, "score": repr(score),
            "uri": f"models:/{name}/{version.version}"}  # fmt: skip


def _digests(client: MlflowClient, upstream: dict[str, str]) -> dict[str, str]:
    """The bundle digest of each registered version in ``upstream`` (by task), by which
    ``predict`` checks that the models it loads form the lineage they were registered in."""
    found = {}
    for task, uri in upstream.items():
        named = tracking.registered_version(uri)
        if named is None:
            raise UserError(f"{uri}: not a registered model version (models:/<name>/<version>)")
        found[task] = client.get_model_version(*named).tags["bundle_digest"]
    return found


def _new_version(client: MlflowClient, bundle: Bundle, experiment_id: str, tags: dict[str, str],
                 upstream: dict[str, str], sources: Sources, recorded: dict[str, str]):  # fmt: skip
    """Log the model and create its version, tagged with ``recorded`` (what identifies it and
    its score), ``tags`` and the runs it comes from."""
    name = bundle.manifest["name"]
    with contextlib.ExitStack() as stack:
        run_id = sources.evaluation
        if run_id is None:
            run_id = stack.enter_context(
                tracking.run(experiment_id, f"register_{bundle.task}", tags)
            ).run_id
        tmp = stack.enter_context(io.scratch_dir("hecktor-register-"))
        save_model(bundle, tmp / "model", upstream, requirements())
        model = mlflow.initialize_logged_model(
            name=name, source_run_id=run_id, experiment_id=experiment_id,
            tags={k: recorded[k] for k in ("bundle_digest", "cv_score")},
        )  # fmt: skip
        try:
            client.log_model_artifacts(model.model_id, str(tmp / "model"))
        except Exception:
            mlflow.finalize_logged_model(model.model_id, "FAILED")
            raise
        mlflow.finalize_logged_model(model.model_id, "READY")
    version_tags = {
        **tags,
        **recorded,
        UPSTREAM_DIGESTS: json.dumps(_digests(client, upstream), sort_keys=True),
        "cv_metric": bundle.manifest["score"]["name"],
        "code": bundle.manifest["code"],
        "data": bundle.manifest["data"],
        "evaluation_run": sources.evaluation or "",
        **{f"training_run.{fold}": run for fold, run in sources.training.items()},
    }
    return client.create_model_version(name, f"models:/{model.model_id}", run_id=run_id,
                                       tags=version_tags, model_id=model.model_id)  # fmt: skip


def register_models(cfg: Config, built: dict[str, Path], tags: dict[str, str]) -> dict[str, dict]:
    """Register the bundles ``built`` (by task, upstream first: :func:`build_bundles`), each
    chained to the versions of its upstream tasks registered here."""
    registered: dict[str, dict] = {}
    for task, path in built.items():
        bundle = load_bundle(path)
        upstream = {t: registered[t]["uri"] for t in lineage(task) if t != task}
        registered[task] = register_model(bundle, cfg.paths.mlruns, tags, upstream,
                                          sources_of(cfg, bundle))  # fmt: skip
    return registered
