"""The DVC pipeline end to end on the tiny profile, in a scratch copy of the project."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hecktor.checkpoints import load_checkpoint
from hecktor.devices import cpu_supports_bf16
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _project(root: Path, precision: str | None = None) -> Path:
    """A scratch copy of the project on the tiny profile; ``precision`` forces every task's."""
    shutil.copy(ROOT / "dvc.yaml", root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "tiny"
    if precision:
        for task in ("seg", "hpv", "rfs"):
            params["profiles"]["tiny"][task].setdefault("train", {})["precision"] = precision
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(
        ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert _run(command, root).returncode == 0
    shutil.copy(ROOT / ".dvc" / "config", root / ".dvc" / "config")  # the project's cache links
    shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots")  # its plot templates
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _project(tmp_path_factory.mktemp("project"))


def test_repro_runs_every_stage_then_nothing(project):
    first = _run(["dvc", "repro"], project)
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("synth", "prepare", "split", "tune_seg", "train_seg", "evaluate_seg",
                  "tune_hpv", "derive_rfs", "tune_rfs", "register", "report"):  # fmt: skip
        assert f"Running stage '{stage}'" in first.stdout
    assert (project / "data" / "prepared" / "cases.csv").is_file()
    assert (project / "data" / "splits.json").is_file()
    assert (project / "dvc.lock").is_file()
    assert (project / "models" / "seg" / "holdout" / "swa.pt").is_file()
    assert (project / "mlruns" / "mlflow.db").is_file()
    # outputs are linked from DVC's cache, not copied; optimizer state is not an output
    swa = project / "models" / "seg" / "holdout" / "swa.pt"
    assert swa.stat().st_nlink == 2, "a copy beside DVC's cache, not a link to it"
    assert not list((project / "models").rglob("last.pt"))
    assert (project / "mlruns" / "resume" / "seg" / "holdout" / "last.pt").is_file()
    shown = _run(["dvc", "metrics", "show", "--json"], project)
    assert "GTVp_DSC" in shown.stdout  # one short table: the headline figures only
    assert "metrics/summary.json" in shown.stdout and "metrics/seg.json" not in shown.stdout
    drawn = json.loads(_run(["dvc", "plots", "show", "--json"], project).stdout)
    assert not drawn.get("errors") and drawn["data"]["seg validation"]  # every plot renders

    tuned = yaml.safe_load((project / "tuned" / "seg.yaml").read_text())
    assert tuned["study"].startswith("seg-tiny-") and tuned["values"]
    report = (project / "reports" / "index.md").read_text()
    assert "| Task 1: GTVp and GTVn segmentation | hold-out GTVp_DSC |" in report

    second = _run(["dvc", "repro"], project)
    assert second.returncode == 0
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout


def test_predict_from_the_registry_on_a_fresh_cohort_is_scored(project):
    fresh = project / "fresh"
    made = _run(
        ["hecktor", "synth", "--out", str(fresh), "--patients", "6", "--seed", "7"], project
    )
    assert made.returncode == 0, made.stderr
    out = project / "predicted"
    predicted = _run(["hecktor", "predict", "--input", str(fresh), "--output", str(out)], project)
    assert predicted.returncode == 0, predicted.stderr
    assert "models:/hecktor-seg@champion (version 1)" in (out / "manifest.json").read_text()
    for task, pred, truth in (
        ("seg", out, fresh / "Task 1"),
        ("rfs", out / "predictions.csv", fresh / "Task 2" / "HECKTOR_2025_Training_Task_2.csv"),
        ("hpv", out / "predictions.csv", fresh / "Task 3" / "HECKTOR_2025_Training_Task_3.csv"),
    ):
        scored = _run(["hecktor", "evaluate", task, "--pred", str(pred), "--truth", str(truth),
                       "--out", str(project / f"{task}.json")], project)  # fmt: skip
        assert scored.returncode == 0, scored.stderr


def test_a_scoring_setting_reruns_downstream_stages_without_retraining(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["tiny"]["seg"]["baseline_suv"] = 3.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = _run(["dvc", "repro"], project)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert "Running stage 'evaluate_seg'" in output
    for upstream in ("synth", "prepare", "split"):
        assert f"Running stage '{upstream}'" not in output
    assert "resuming" in output and "starting afresh" not in output, output  # checkpoints reused
    assert "seg epoch 1/" not in output


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_repro_under_forced_bf16_finishes(tmp_path):
    """Reduced-precision kernels differ between CPUs (NaN gradients on some): forced bf16 must
    still run the whole pipeline, falling back to fp32 where a step goes non-finite."""
    root = _project(tmp_path, precision="bf16")
    run = _run(["dvc", "repro"], root)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Running stage 'report'" in run.stdout
    for task in ("seg", "hpv"):
        fold = next(p for p in (root / "models" / task).iterdir() if (p / "best.pt").is_file())
        precision = load_checkpoint(fold / "best.pt")["precision"]
        assert precision["reason"] == "train.precision: bf16"
