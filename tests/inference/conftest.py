"""Trained tiny models of all three tasks, scored and bundled once per session."""

from __future__ import annotations

import os

import mlflow
import pytest

from hecktor import tracking


@pytest.fixture(scope="session")
def trained_cfg(tmp_path_factory, tiny_config, release_dir, prepared_dir, split_cfg):
    """The tiny profile with Tasks 1, 3 and 2 trained and cross-validated (no tracking)."""
    from hecktor.crossval.hpv import crossval_hpv
    from hecktor.crossval.rfs import crossval_rfs
    from hecktor.crossval.seg import crossval_seg
    from hecktor.derive import derive_rfs_inputs
    from hecktor.training.workflow import train
    from tests.conftest import scratch_config

    cfg = scratch_config(
        tiny_config, release_dir, prepared_dir, split_cfg, tmp_path_factory.mktemp("trained")
    )
    for task, score in (("seg", crossval_seg), ("hpv", crossval_hpv), ("rfs", crossval_rfs)):
        if task == "rfs":
            derive_rfs_inputs(cfg)  # Task 2 trains on what Tasks 1 and 3 predict
        train(cfg, task, track=False)
        score(cfg, track=False)
    return cfg


@pytest.fixture(scope="session")
def bundle_dir(trained_cfg):
    from hecktor.register import build_bundles

    out = trained_cfg.paths.models / "bundles"
    build_bundles(trained_cfg, out)
    return out


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty MLflow store (SQLite) of this test's own."""
    monkeypatch.delenv(tracking.ENV, raising=False)
    yield tmp_path / "mlruns"
    mlflow.set_tracking_uri(None)
    os.environ.pop(tracking.ENV, None)


def register_all(bundle_dir, store, tags: dict | None = None) -> dict[str, dict]:
    """Register the bundles of every task in a store, each chained to its upstream versions."""
    from hecktor.bundle import load_bundle
    from hecktor.register import register_model
    from hecktor.tasks import TASKS, lineage

    registered: dict[str, dict] = {}
    for task, spec in TASKS.items():
        upstream = {t: registered[t]["uri"] for t in lineage(task) if t != task}
        bundle = load_bundle(bundle_dir / spec.registry_name)
        registered[task] = register_model(bundle, store, tags or {}, upstream)
    return registered
