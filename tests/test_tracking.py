"""A real MLflow store (SQLite in a temporary folder) and the run tags."""

import importlib.util
import os

import mlflow
import pytest

from hecktor import tracking
from hecktor.cli import main
from hecktor.config import Config


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.ENV, raising=False)
    yield tmp_path / "mlruns"
    mlflow.set_tracking_uri(None)
    os.environ.pop(tracking.ENV, None)  # MLflow exports the URI it was given


def test_sqlite_store_under_mlruns_with_absolute_paths(store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    uri = tracking.tracking_uri("mlruns")
    assert uri == f"sqlite:///{store.resolve()}/mlflow.db"
    exp = tracking.experiment("hecktor-test", "mlruns")
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_metric("dsc", 0.5)
        mlflow.log_text("hello", "note.txt")
    assert (store / "mlflow.db").is_file()
    got = mlflow.get_run(run.info.run_id)
    assert got.data.metrics["dsc"] == 0.5
    assert got.info.artifact_uri.startswith((store / "artifacts").resolve().as_uri())
    assert tracking.experiment("hecktor-test", "mlruns") == exp  # found, not duplicated


def test_environment_overrides_the_store(store, monkeypatch):
    monkeypatch.setenv(tracking.ENV, "http://127.0.0.1:5001")
    assert tracking.tracking_uri(store) == "http://127.0.0.1:5001"


def test_ui_binds_to_loopback_by_default(store):
    command = tracking.ui_command(store)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert tracking.tracking_uri(store) in command


def test_data_version_from_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: hecktor prepare\n    outs:\n"
        "    - path: data/prepared\n      md5: abc123.dir\n"
    )
    assert tracking.data_version("data/prepared", lock) == "abc123.dir"
    assert tracking.data_version("data/other", lock) == "unknown"
    assert tracking.data_version("data/prepared", tmp_path / "none.lock") == "unknown"


def test_run_tags(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = tracking.run_tags(Config(), split="kfold")
    assert set(tags) == {
        "git_commit",
        "data_digest",
        "dvc_data_md5",
        "profile",
        "config_digest",
        "split",
    }
    assert tags["profile"] == "demo" and len(tags["config_digest"]) == 12


def test_runs_of_a_dvc_experiment_carry_its_name(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    tags = tracking.run_tags(Config())
    assert tags["dvc_experiment"] == "lr-sweep-1" and tags["dvc_baseline_rev"] == "abc123"


def test_a_queued_dvc_experiment_logs_to_the_projects_store(monkeypatch, tmp_path):
    monkeypatch.delenv(tracking.ENV, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert (
        tracking.tracking_uri("mlruns")
        == f"sqlite:///{tmp_path / 'project' / 'mlruns' / 'mlflow.db'}"
    )
    assert (
        tracking.tracking_uri(tmp_path / "elsewhere")
        == f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    )


def _texts(db_path) -> list[str]:
    """Every text value the store's database holds."""
    import contextlib
    import sqlite3

    values = []
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f'SELECT * FROM "{table}"'):
                values += [v for v in row if isinstance(v, str)]
    return values


def test_a_moved_store_names_only_its_own_folder(store, tmp_path):
    """MLflow records absolute artifact paths: a moved or copied store is made to name its own
    folder when it is opened, and reads and writes nothing outside it."""
    exp = tracking.experiment("hecktor-test", store)
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_text("hello", "note.txt")
    mlflow.set_tracking_uri(None)
    os.environ.pop(tracking.ENV, None)
    moved = tmp_path / "elsewhere" / "mlruns"
    moved.parent.mkdir()
    store.rename(moved)  # nothing is left at the old path: any use of it would fail or show
    assert tracking.relocate(moved) == [store.resolve()]
    assert not any(str(store.resolve()) in v for v in _texts(moved / "mlflow.db"))
    tracking.open_store(moved)
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "hello"
    exp = tracking.experiment("hecktor-test", moved)
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_text("again", "note.txt")
    assert not store.exists()
    assert tracking.relocate(moved) == []  # once is enough


def test_an_mlflow_that_reads_no_local_store_is_said_in_one_line(tmp_path, monkeypatch, caplog):
    """mlflow-skinny reads no SQLite store without SQLAlchemy (a dependency of this package, but
    an install without dependencies lacks it): predict from the registry says what to do
    instead of blaming the store."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sqlalchemy" else real(name, *a))  # fmt: skip
    monkeypatch.delenv(tracking.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "-i", "in", "-o", "out", "--no-clinical"]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "without SQLAlchemy" in line and "'.[pipeline]'" in line and "--models" in line
    assert "MLFLOW_TRACKING_URI" in line and not (tmp_path / "out").exists()
