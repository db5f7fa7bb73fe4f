import numpy as np

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
