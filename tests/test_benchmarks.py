"""The benchmark scripts still import and parse their options (they are run by hand, not by CI)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_starts(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def _learning():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import learning
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return learning


def test_the_learning_benchmark_writes_only_under_its_folder(tmp_path):
    from hecktor.config import load_config

    learning = _learning()
    cfg = learning.benchmark_config(load_config(ROOT / "params.yaml", "learning"), tmp_path, "fp32")
    for name, value in cfg.paths.model_dump().items():
        assert tmp_path in Path(value).parents, name
    assert {cfg.seg.train.precision, cfg.hpv.train.precision, cfg.rfs.train.precision} == {"fp32"}
    assert cfg.synth.patients >= 300 and cfg.split.test_fraction == 0  # pooled out of fold


def _compared(network, verdict):
    return {"network": network, "verdict": verdict}


def test_the_learning_targets_need_the_verdicts_and_the_figures():
    learning = _learning()
    seg = {"comparison": {k: _compared(0.8, "network ahead")
                          for k in ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg")}}  # fmt: skip
    hpv = {"comparison": {"cv_auc": _compared(0.8, "not distinguishable from the baseline")}}
    rfs = {"comparison": {"cv": {"baseline_clinical_image": _compared(0.66, "network ahead")}}}
    assert all(t["met"] for t in learning.targets(seg, hpv, rfs))
    seg["comparison"]["GTVn_F1agg"] = _compared(0.8, "not distinguishable from the baseline")
    hpv["comparison"]["cv_auc"] = _compared(0.74, "baseline ahead")
    rfs["comparison"]["cv"]["baseline_clinical_image"] = _compared(0.64, "network ahead")
    assert [t["met"] for t in learning.targets(seg, hpv, rfs)] == [False, False, False, False, True]
