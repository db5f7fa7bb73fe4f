"""Trained tiny models of all three tasks, scored and bundled once per session."""

from __future__ import annotations

import os

import mlflow
import pytest

from hecktor import tracking
from hecktor.config import override


@pytest.fixture(scope="session")
def trained_cfg(tmp_path_factory, tiny_config, release_dir, prepared_dir, split_cfg):
    """The tiny profile with Tasks 1, 3 and 2 trained and cross-validated (no tracking)."""
    from hecktor.crossval.hpv import crossval_hpv
    from hecktor.crossval.rfs import crossval_rfs
    from hecktor.crossval.seg import crossval_seg
    from hecktor.data.splits import write_splits
    from hecktor.training.workflow import train

    root = tmp_path_factory.mktemp("trained")
    paths = override(
        tiny_config.paths,
        release=release_dir,
        oracle=release_dir.parent / "oracle.csv",
        prepared=prepared_dir,
        splits=root / "splits.json",
        **{k: root / k for k in ("models", "predictions", "metrics", "plots", "reports")},
        mlruns=root / "mlruns",
        studies=root / "studies",
        tuned=root / "tuned",
    )
    write_splits(prepared_dir, paths.splits, split_cfg)
    cfg = override(tiny_config, paths=paths)
    for task, score in (("seg", crossval_seg), ("hpv", crossval_hpv), ("rfs", crossval_rfs)):
        train(cfg, task, track=False)
        score(cfg, track=False)
    return cfg


@pytest.fixture(scope="session")
def bundle_dir(trained_cfg):
    from hecktor.inference.bundle import build_bundles

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
