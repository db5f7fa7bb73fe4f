"""MLflow store, run tags and the UI command.

The store is SQLite under ``mlruns/`` (``mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``) with
absolute paths, so ``dvc exp run --temp`` (which runs in a copy of the repo) logs to the same place.
MLflow records those paths in the database; a project that was copied or moved is made to name its
own folder when its store is opened (:func:`open_store`), so that it never reads or writes the
folder it came from. ``MLFLOW_TRACKING_URI`` overrides the store, e.g. a shared tracking server
backed by PostgreSQL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import yaml
from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hecktor import io
from hecktor.config import Config, flat
from hecktor.errors import UserError
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


def _local_uri(mlruns: Path | str) -> str:
    return f"sqlite:///{store_path(mlruns) / 'mlflow.db'}"


def tracking_uri(mlruns: Path | str) -> str:
    """The tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else SQLite in the store's folder."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    return _local_uri(mlruns)


def is_local(mlruns: Path | str) -> bool:
    """Whether runs go to the project's own SQLite store (MLflow exports the URI it is given to
    the environment: that one counts as local too)."""
    return os.environ.get(ENV) in (None, "", _local_uri(mlruns))


def artifact_location(mlruns: Path | str) -> str:
    return (store_path(mlruns) / "artifacts").as_uri()


STORE = "store.json"  # in the store's folder: the folder it was last opened in


def _recorded_roots(folder: Path, db: sqlite3.Connection) -> set[Path]:
    """The folders the store's records name as its own: the one ``store.json`` recorded when it
    was last opened; for a store from before that file, the folder holding the ``artifacts`` of
    the experiments this package created (:func:`artifact_location`), named like this one."""
    try:
        return {Path(json.loads((folder / STORE).read_text())["root"])}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    roots = set()
    query = "SELECT artifact_location FROM experiments WHERE name LIKE 'hecktor-%'"
    for (location,) in db.execute(query):
        if isinstance(location, str) and location.startswith("file://"):
            path = Path(unquote(urlparse(location).path))
            if path.name == "artifacts" and path.parent.name == folder.name:
                roots.add(path.parent)
    return roots


def _rewrite(db: sqlite3.Connection, moved: list[Path], folder: Path) -> None:
    """Every text value in the database under one of the ``moved`` folders, made the same path
    under ``folder`` (as a file URI and as a plain path), in one transaction."""
    columns = [
        (table, column)
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")')
        if not kind or any(t in kind.upper() for t in ("CHAR", "TEXT", "CLOB"))
    ]
    with db:
        for old in moved:
            for before, after in ((old.as_uri(), folder.as_uri()), (str(old), str(folder))):
                for table, column in columns:
                    db.execute(
                        f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                        f'WHERE substr("{column}", 1, ?) = ?',
                        (after + "/", len(before) + 2, len(before) + 1, before + "/"),
                    )


def relocate(mlruns: Path | str) -> list[Path]:
    """Make a copied or moved local store name its own folder: every path MLflow recorded under
    the folder the store was last opened in (experiments' artifact locations, runs', logged
    models' and model versions' storage) is rewritten to the same path in this folder, and
    ``store.json`` records this folder. Returns the folders replaced (none for a store that
    never moved)."""
    folder = store_path(mlruns)
    moved: list[Path] = []
    if (folder / "mlflow.db").is_file():
        with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as db:
            moved = sorted(r for r in _recorded_roots(folder, db) if r != folder)
            if moved:
                _rewrite(db, moved, folder)
    if folder.is_dir() and (moved or not (folder / STORE).is_file()):
        io.write_json(folder / STORE, {"root": str(folder)})  # a new store starts here
    if moved:
        log.warning("%s: the store was copied or moved from %s; its records now name this folder",
                    folder, ", ".join(map(str, moved)))  # fmt: skip
    return moved


def reads_local_stores() -> bool:
    """Whether this install's MLflow reads a local (SQLite) store: ``mlflow-skinny`` does only
    beside SQLAlchemy (a dependency of this package; MLflow asks the same question)."""
    try:
        return importlib.util.find_spec("sqlalchemy") is not None
    except ImportError:
        return False


def open_store(mlruns: Path | str) -> str:
    """Point MLflow at the project's store (the environment's tracking URI if set) and return
    the URI. A local store is created if absent, and relocated (:func:`relocate`) if it was
    copied or moved, before MLflow reads it."""
    local = is_local(mlruns)  # before set_tracking_uri, which exports the URI to the environment
    if local and not reads_local_stores():
        raise UserError(
            f"{_local_uri(mlruns)}: this install's MLflow reads no local store (mlflow-skinny "
            "without SQLAlchemy): install this package with its dependencies (pip install -c "
            "constraints.txt '.[pipeline]' for everything), or give --models (an `hecktor "
            "export` folder), or set MLFLOW_TRACKING_URI to a tracking server"
        )
    if local:
        store_path(mlruns).mkdir(parents=True, exist_ok=True)
        with FileLock(str(store_path(mlruns) / "store.lock")):
            relocate(mlruns)
    uri = tracking_uri(mlruns)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment(name: str, mlruns: Path | str) -> str:
    """Point MLflow at the store and return the id of experiment ``name``, created if needed."""
    local = is_local(mlruns)
    open_store(mlruns)
    # processes starting together (Optuna workers) must not create the database twice
    guard = FileLock(str(store_path(mlruns) / "store.lock")) if local else contextlib.nullcontext()
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
    """The ``mlflow ui`` command line for this store, bound to ``host`` (loopback by default).
    Call :func:`open_store` first: the UI reads what the store records."""
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


def registered_version(uri: str) -> tuple[str, str] | None:
    """``(name, version)`` of a registry URI that names a version (``models:/hecktor-seg/3``)."""
    name, _, version = uri.removeprefix("models:/").partition("/")
    return (name, version) if uri.startswith("models:/") and version.isdigit() else None


def _chain_is_champion(client, version) -> bool:
    """Whether every version ``version`` builds on (its ``upstream`` tag) is its model's champion."""
    for uri in json.loads(version.tags.get("upstream") or "{}").values():
        named = registered_version(uri)
        champion = _champion(client, named[0]) if named else None
        if champion is None or str(champion.version) != named[1]:  # type: ignore[index]
            return False
    return True


def promote(client, name: str, version: str, score: float, data: str | None = None) -> str:
    """Move ``champion`` to ``version`` if it beats the current champion's CV score, else mark it
    ``challenger``. A first version is champion; a tie keeps the incumbent.

    Champions form one lineage: a version that builds on versions that are not their models'
    champions stays challenger, and one that builds on the champions replaces a champion that
    does not (after a new Task 1 champion, the Task 3 and Task 2 versions registered on it take
    over, whatever their scores). Scores on different data are not comparable: a challenger
    trained on other data than the champion (``data`` tag) is kept out as the rule says, with a
    warning saying how to promote it.
    """
    champion = _champion(client, name)
    if champion is not None and str(champion.version) == str(version):
        return CHAMPION
    mine = client.get_model_version(name, str(version))
    best = float(champion.tags.get("cv_score", "-inf")) if champion is not None else -math.inf
    if not _chain_is_champion(client, mine):
        alias = CHALLENGER
        log.info("%s version %s builds on versions that are not champions: challenger", name,
                 version)  # fmt: skip
    elif champion is None or not _chain_is_champion(client, champion) or score > best:
        alias = CHAMPION
    else:
        alias = CHALLENGER
    client.set_registered_model_alias(name, alias, str(version))
    if (
        alias == CHALLENGER
        and champion is not None
        and data
        and champion.tags.get("data", data) != data
    ):
        log.warning(
            "%s version %s (data %s, CV %.4f) stays challenger to champion version %s, trained on "
            "other data (%s, CV %.4f): the scores are not comparable. To serve it: MlflowClient()"
            ".set_registered_model_alias(%r, 'champion', %r)",
            name, version, data, score, champion.version, champion.tags["data"], best, name,
            str(version),
        )  # fmt: skip
    return alias


@dataclass(frozen=True)
class Fetched:
    """A folder fetched for a URI, and what the registry recorded of it (for a registry URI)."""

    path: Path
    version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def fetch_bundle(uri: str, dst: Path | str, mlruns: Path | str | None) -> Fetched:
    """A folder from a local path or any MLflow URI (``models:/hecktor-seg@champion``: the MLflow
    model, which holds the bundle), with the registry version and its tags when the URI names
    one; from the project's store at ``mlruns``, or from MLflow's current one (``None``: a served
    model's environment)."""
    if Path(uri).is_dir():
        return Fetched(Path(uri))

    if mlruns is not None:
        open_store(mlruns)
    version = None
    if uri.startswith("models:/"):
        name, _, ref = uri.removeprefix("models:/").partition("@")
        client = MlflowClient()
        named = registered_version(uri)
        if ref:
            version = client.get_model_version_by_alias(name, ref)
        elif named:
            version = client.get_model_version(*named)
    path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    if version is None:
        return Fetched(Path(path))
    return Fetched(Path(path), str(version.version), dict(version.tags))
