"""The DVC pipeline end to end on the tiny profile, in a scratch copy of the project."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "dvc.yaml", root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "tiny"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(
        ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert _run(command, root).returncode == 0
    return root


def test_repro_runs_every_stage_then_nothing(project):
    first = _run(["dvc", "repro"], project)
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("synth", "prepare", "split", "train_seg", "evaluate_seg"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (project / "data" / "prepared" / "cases.csv").is_file()
    assert (project / "data" / "splits.json").is_file()
    assert (project / "dvc.lock").is_file()
    assert (project / "models" / "seg" / "holdout" / "swa.pt").is_file()
    assert (project / "mlruns" / "mlflow.db").is_file()
    shown = _run(["dvc", "metrics", "show", "--json"], project)
    assert "GTVp_DSC" in shown.stdout

    second = _run(["dvc", "repro"], project)
    assert second.returncode == 0
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout


def test_changing_a_split_parameter_reruns_split_and_downstream_only(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["tiny"]["split"]["seed"] = 99
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = _run(["dvc", "repro"], project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Running stage 'split'" in again.stdout
    assert "Running stage 'train_seg'" in again.stdout
    assert "Running stage 'prepare'" not in again.stdout
    assert "Running stage 'synth'" not in again.stdout
