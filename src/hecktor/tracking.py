"""MLflow store, run tags and the UI command.

The store is SQLite under ``mlruns/`` (``mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``) with
absolute paths, so ``dvc exp run --temp`` (which runs in a copy of the repo) logs to the same place.
``MLFLOW_TRACKING_URI`` overrides it, e.g. a shared tracking server backed by PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from hecktor.config import Config

ENV = "MLFLOW_TRACKING_URI"


def tracking_uri(mlruns: Path | str) -> str:
    """The tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else SQLite in ``mlruns``."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    return f"sqlite:///{Path(mlruns).resolve() / 'mlflow.db'}"


def artifact_location(mlruns: Path | str) -> str:
    return (Path(mlruns).resolve() / "artifacts").as_uri()


def experiment(name: str, mlruns: Path | str) -> str:
    """Point MLflow at the store and return the id of experiment ``name``, created if needed."""
    import mlflow

    # Decide before set_tracking_uri: MLflow exports the URI it is given to the environment.
    local = not os.environ.get(ENV) or os.environ[ENV] == tracking_uri(mlruns)
    if local:
        Path(mlruns).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(mlruns))
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
    """Tags on every run: code, data version, profile, config hash and split."""
    tags = {
        "git_commit": git_commit(),
        "data_version": data_version(cfg.paths.prepared),
        "profile": cfg.profile,
        "config_hash": cfg.digest(),
    }
    if split:
        tags["split"] = split
    return tags


def ui_command(mlruns: Path | str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for this store, bound to ``host`` (loopback by default)."""
    return [
        "mlflow", "ui",
        "--backend-store-uri", tracking_uri(mlruns),
        "--default-artifact-root", artifact_location(mlruns),
        "--host", host, "--port", str(port),
    ]  # fmt: skip
