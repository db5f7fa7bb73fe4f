"""MLflow store, run tags and the UI command.

The store is SQLite under ``mlruns/`` (``mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``) with
absolute paths, so ``dvc exp run --temp`` (which runs in a copy of the repo) logs to the same place.
``MLFLOW_TRACKING_URI`` overrides it, e.g. a shared tracking server backed by PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import yaml
from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hecktor.config import Config, flat
from hecktor.fingerprints import file_sha256, prepared_digest

ENV = "MLFLOW_TRACKING_URI"

log = logging.getLogger(__name__)


def store_path(mlruns: Path | str) -> Path:
    """The MLflow store's folder. ``dvc exp run --queue`` runs the stages in a temporary copy of
    the project and names the project in ``$DVC_ROOT``: a relative store stays the project's, so
    the experiment's runs are not lost with the copy."""
    path = Path(mlruns)
    if not path.is_absolute() and os.environ.get("DVC_ROOT"):
        path = Path(os.environ["DVC_ROOT"]) / path
    return path.resolve()


def tracking_uri(mlruns: Path | str) -> str:
    """The tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else SQLite in the store's folder."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    return f"sqlite:///{store_path(mlruns) / 'mlflow.db'}"


def artifact_location(mlruns: Path | str) -> str:
    return (store_path(mlruns) / "artifacts").as_uri()


def experiment(name: str, mlruns: Path | str) -> str:
    """Point MLflow at the store and return the id of experiment ``name``, created if needed."""

    # Decide before set_tracking_uri: MLflow exports the URI it is given to the environment.
    local = not os.environ.get(ENV) or os.environ[ENV] == tracking_uri(mlruns)
    guard: contextlib.AbstractContextManager = contextlib.nullcontext()
    if local:
        Path(mlruns).mkdir(parents=True, exist_ok=True)
        # processes starting together (Optuna workers) must not create the database twice
        guard = FileLock(str(Path(mlruns) / "store.lock"))
    mlflow.set_tracking_uri(tracking_uri(mlruns))
    with guard:
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return mlflow.create_experiment(
            name, artifact_location=artifact_location(mlruns) if local else None
        )


def git_commit(root: Path | str = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def data_version(path: Path | str, lock: Path | str = "dvc.lock") -> str:
    """The hash DVC recorded for output ``path`` in ``dvc.lock`` ("unknown" before the first lock)."""
    lock = Path(lock)
    if not lock.is_file():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    target = os.path.normpath(str(path))
    for stage in stages.values():
        for out in stage.get("outs", []):
            if os.path.normpath(out.get("path", "")) == target:
                return str(out.get("md5") or out.get("hash") or "unknown")
    return "unknown"


def run_tags(cfg: Config, split: str | None = None) -> dict[str, str]:
    """Tags on every run: code, data (the package's digest, as bundles carry it, and DVC's md5 of
    the prepared folder), profile, config digest and split; under ``dvc exp run``, the DVC
    experiment's name and baseline commit, so a run in the MLflow UI leads to its experiment."""
    tags = {
        "git_commit": git_commit(),
        "data_digest": prepared_digest(cfg.paths.prepared),
        "dvc_data_md5": data_version(cfg.paths.prepared),
        "profile": cfg.profile,
        "config_digest": cfg.digest(),
    }
    if split:
        tags["split"] = split
    if os.environ.get("DVC_EXP_NAME"):  # set by DVC for the stages of an experiment
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        tags["dvc_baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    return tags


def evaluation_tags(cfg: Config, split: str, metrics: Path) -> dict[str, str]:
    """An evaluation run's tags: :func:`run_tags` and the digest of the metrics file it wrote, by
    which the model registered from those metrics names it as its source."""
    return run_tags(cfg, split) | {METRICS_TAG: file_sha256(metrics)}


def ui_command(mlruns: Path | str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for this store, bound to ``host`` (loopback by default)."""
    return [
        "mlflow", "ui",
        "--backend-store-uri", tracking_uri(mlruns),
        "--default-artifact-root", artifact_location(mlruns),
        "--host", host, "--port", str(port),
    ]  # fmt: skip


class Tracker:
    """Logs to one MLflow run by id; a tracker without a run does nothing (ranks > 0, tests)."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        self._client = None
        if run_id is not None:
            self._client = MlflowClient()

    @property
    def active(self) -> bool:
        return self._client is not None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._client is None:
            return

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and v == v
        ]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: dict[str, object]) -> None:
        if self._client is None:
            return

        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(batch), 100):
            self._client.log_batch(self.run_id, params=batch[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._client is None:
            return

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        if self._client is not None:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        if self._client is not None:
            self._client.log_dict(self.run_id, data, name)

    def log_figure(self, figure, name: str) -> None:
        if self._client is not None:
            self._client.log_figure(self.run_id, figure, name)


flatten = flat  # nested config or results -> dotted keys, for MLflow params and metrics


@contextlib.contextmanager
def run(
    experiment_id: str,
    name: str,
    tags: dict[str, str] | None = None,
    parent: Tracker | None = None,
    run_id: str | None = None,
    enabled: bool = True,
) -> Iterator[Tracker]:
    """Start (or resume, with ``run_id``) a run, nested under ``parent``; always closed on exit.

    The status ends FINISHED, FAILED on an exception, or KILLED on an interrupt.
    """
    if not enabled:
        yield Tracker(None)
        return

    client = MlflowClient()
    all_tags = {"mlflow.runName": name, **(tags or {})}
    if parent is not None and parent.run_id:
        all_tags["mlflow.parentRunId"] = parent.run_id
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, tags=all_tags, run_name=name).info.run_id
    tracker = Tracker(run_id)
    if run_id is not None:
        tracker.set_tags(all_tags)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status=status)


# --------------------------------------------------------------------------- model registry

CHAMPION, CHALLENGER = "champion", "challenger"
# run tags by which a registered model finds the runs that made it: a training fold's final
# weights, an evaluation's metrics file (SHA-256 of the file)
WEIGHTS_TAG, METRICS_TAG = "weights_sha256", "metrics_sha256"


def _champion(client, name: str):

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(client, name: str, version: str, score: float, data: str | None = None) -> str:
    """Move ``champion`` to ``version`` if it beats the current champion's CV score, else mark it
    ``challenger``. A first version is champion; a tie keeps the incumbent.

    Scores on different data are not comparable: a challenger trained on other data than the
    champion (``data`` tag) is kept out as the rule says, with a warning saying how to promote it.
    """
    champion = _champion(client, name)
    if champion is not None and str(champion.version) == str(version):
        return CHAMPION
    best = float(champion.tags.get("cv_score", "-inf")) if champion is not None else -math.inf
    alias = CHAMPION if champion is None or score > best else CHALLENGER
    client.set_registered_model_alias(name, alias, str(version))
    if alias == CHALLENGER and data and champion.tags.get("data", data) != data:
        log.warning(
            "%s version %s (data %s, CV %.4f) stays challenger to champion version %s, trained on "
            "other data (%s, CV %.4f): the scores are not comparable. To serve it: MlflowClient()"
            ".set_registered_model_alias(%r, 'champion', %r)",
            name, version, data, score, champion.version, champion.tags["data"], best, name,
            str(version),
        )  # fmt: skip
    return alias


def fetch_bundle(uri: str, dst: Path | str, mlruns: Path | str) -> tuple[Path, str | None]:
    """A folder from a local path or any MLflow URI (``models:/hecktor-seg@champion``: the MLflow
    model, which holds the bundle); returns the folder and the registry version when the URI
    names one."""
    if Path(uri).is_dir():
        return Path(uri), None

    mlflow.set_tracking_uri(tracking_uri(mlruns))
    version = None
    if uri.startswith("models:/"):
        name, _, ref = uri.removeprefix("models:/").partition("@")
        client = MlflowClient()
        if ref:
            version = client.get_model_version_by_alias(name, ref).version
        else:
            name, _, version = uri.removeprefix("models:/").partition("/")
    path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    return Path(path), version
