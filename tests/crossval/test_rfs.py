import json
import math

import numpy as np
import pytest

from hecktor.crossval.rfs import c_index_with_ci


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    n = 80
    risk = rng.normal(size=n)
    time = np.exp(-risk + rng.normal(scale=1.0, size=n))
    event = (rng.random(n) < 0.8).astype(float)
    out = c_index_with_ci(time, event, risk, resamples=300)
    assert out["ci_low"] <= out["c_index"] <= out["ci_high"]
    assert 0.6 < out["c_index"] < 1.0
    assert out["n"] == n and out["events"] == int(event.sum())
    assert "ci_low" not in c_index_with_ci(time, event, risk, resamples=0)


@pytest.mark.slow
def test_without_a_test_set_tasks_3_and_2_train_and_score_on_folds_over_all_patients(
    tiny_config, release_dir, prepared_dir, split_cfg, tmp_path
):
    """The paper's splits: folds over every patient and no internal test set
    (``split.test_fraction: 0``, the paper profile's): both tasks train and score."""
    from hecktor.config import override
    from hecktor.crossval.hpv import crossval_hpv
    from hecktor.crossval.rfs import crossval_rfs
    from hecktor.crossval.seg import crossval_seg
    from hecktor.derive import derive_rfs_inputs
    from hecktor.training.workflow import train
    from tests.conftest import scratch_config

    splits = override(split_cfg, test_fraction=0.0)
    cfg = scratch_config(tiny_config, release_dir, prepared_dir, splits, tmp_path)
    saved = json.loads(cfg.paths.splits.read_text())
    for task in ("task2", "task3"):
        assert not saved[task].get("test")
    train(cfg, "seg", track=False)
    crossval_seg(cfg, track=False)
    train(cfg, "hpv", track=False)
    hpv = crossval_hpv(cfg, track=False)
    derive_rfs_inputs(cfg)
    train(cfg, "rfs", track=False)
    rfs = crossval_rfs(cfg, track=False)
    for result in (hpv, rfs):
        assert math.isfinite(result["score"]["value"])
