"""Optuna studies on the tiny profile: real journal storage, real training, a real MLflow store."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hecktor import tracking, tuning
from hecktor.config import ConfigError, SearchDim, apply_tuned, load_config, override, read_tuned
from hecktor.training.workflow import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(project_cfg, tmp_path, monkeypatch):
    """A params file for the tiny profile writing to a temporary folder, and its config."""
    monkeypatch.delenv(tracking.ENV, raising=False)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"] = {k: str(v) for k, v in project_cfg.paths.model_dump().items()}
    raw["profile"] = "tiny"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    yield params, load_config(params)
    mlflow.set_tracking_uri(None)
    os.environ.pop(tracking.ENV, None)


def _study(cfg, task="seg") -> optuna.Study:
    return optuna.load_study(
        study_name=tuning.study_name(cfg, task), storage=tuning.storage_of(cfg)
    )


def _hecktor(params: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hecktor.cli", *args, "--params", str(params)]


@pytest.mark.slow
def test_study_tunes_on_the_inner_holdout_tracks_trials_and_feeds_training(project):
    _, cfg = project
    result = tuning.tune(cfg, "seg")
    written = read_tuned(cfg, "seg")
    assert written == result and set(written["values"]) == {"train.lr"}
    assert written["study"] == tuning.study_name(cfg, "seg") and written["trials"]["complete"] == 2

    study = _study(cfg)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params == {"train.lr": cfg.seg.train.lr}  # first, the params as written
    assert trials[0].user_attrs["params_file"] is True
    assert trials[0].params != trials[1].params
    assert written["value"] == max(t.value for t in trials)
    assert not any((cfg.paths.studies / study.study_name).glob("trial-*"))  # checkpoints freed

    client = MlflowClient(tracking.tracking_uri(cfg.paths.mlruns))
    experiment = client.get_experiment_by_name("hecktor-tune-seg")
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    parent_of = {i: r.data.tags.get("mlflow.parentRunId") for i, r in runs.items()}
    (study_run,) = [i for i, p in parent_of.items() if p is None]
    trial_runs = [i for i, p in parent_of.items() if p == study_run]
    fold_runs = [i for i, p in parent_of.items() if p in trial_runs]
    assert len(trial_runs) == 2 and len(fold_runs) == 2
    assert {runs[i].info.run_name for i in fold_runs} == {"tuning"}  # never the hold-out itself
    best = [i for i in trial_runs if runs[i].data.tags["best_trial"] == "true"]
    assert [runs[i].data.tags["optuna_trial"] for i in best] == [str(written["trial"])]
    plots = {a.path for a in client.list_artifacts(study_run, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/param_importances.png"}
    splits = yaml.safe_load(cfg.paths.splits.read_text())["task1"]
    assert not set(splits["tuning"]["val"]) & set(splits["holdout"]["val"])

    # training reads the tuned value and records where it came from
    tuned = apply_tuned(cfg)
    assert tuned.seg.train.lr == written["values"]["train.lr"]
    train(tuned, "seg")
    runs = client.search_runs(
        [client.get_experiment_by_name("hecktor-seg").experiment_id],
        filter_string="attributes.run_name = 'train_seg'",
    )
    assert runs[0].data.params["seg.train.lr"] == str(written["values"]["train.lr"])
    assert runs[0].data.tags["tuned_study"] == written["study"]
    assert runs[0].data.tags["tuned_trial"] == str(written["trial"])

    # the study is kept: the same count does nothing more, a larger one continues it
    tuning.tune(cfg, "seg")
    assert len(_study(cfg).trials) == 2
    tuning.tune(cfg, "seg", trials=3)
    assert len(_study(cfg).trials) == 3


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(project, monkeypatch):
    _, cfg = project
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise FloatingPointError("seg: non-finite loss nan at epoch 1")
        return train(*args, **kwargs)

    monkeypatch.setattr(tuning, "train", flaky)
    result = tuning.tune(cfg, "seg", track=False, trials=3)
    trials = _study(cfg).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert "non-finite loss" in trials[0].user_attrs["error"]
    assert result["trials"] == {"complete": 2, "pruned": 0, "fail": 1}
    assert result["trial"] in (1, 2)


@pytest.mark.slow
def test_numeric_faults_never_fail_the_first_trial_and_fp32_failures_are_tagged(
    project, monkeypatch
):
    """Under bf16 a faulty kernel (NaN gradients) costs a fallback, not the trial; a trial whose
    training fails in fp32 is FAIL with the reason, and the study goes on."""
    from hecktor.config import override
    from hecktor.training import workflow
    from tests.conftest import PoisonedSegmentation

    _, cfg = project
    seg = override(cfg.seg, train=override(cfg.seg.train, precision="bf16"))
    tune = override(cfg.tune, seg=override(cfg.tune.seg, epochs=2))  # room to fail after a fallback
    cfg = override(cfg, seg=seg, tune=tune)
    built = []

    def poisoned(config, name, mode=None):
        task = PoisonedSegmentation(config.seg, config.paths.prepared)
        task.always = len(built) == 1  # the second trial fails even in fp32
        built.append(task)
        return task

    monkeypatch.setattr(workflow, "build_task", poisoned)
    result = tuning.tune(cfg, "seg", track=False, trials=3)
    trials = _study(cfg).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["params_file"] is True  # the values as written completed
    assert "in fp32" in trials[1].user_attrs["error"]
    assert result["trials"] == {"complete": 2, "pruned": 0, "fail": 1}
    assert read_tuned(cfg, "seg") == result


def test_a_trial_worse_than_the_best_on_the_same_folds_is_pruned(project, monkeypatch):
    """The pruning path end to end: fold scores reach the pruner, the trial stops and is recorded.

    Training is replaced by fold scores chosen by the trial's values (real training cannot be made
    to score badly on demand): the params as written score well on every fold, sampled values badly.
    """
    from hecktor.config import override

    _, cfg = project
    spec = override(cfg.tune.rfs, folds=(0, 1, 2), pruner="wilcoxon", p_threshold=0.2)
    cfg = cfg.model_copy(update={"tune": override(cfg.tune, rfs=spec)})
    written = cfg.rfs.dropout

    def scored_by_values(trial_cfg, task, track, *, on_fold, folds, **_):
        good = trial_cfg.rfs.dropout == written
        for index, (name, _, _) in enumerate(folds):
            on_fold(index, name, (0.8 if good else 0.3) + 0.01 * index)
        return {}

    monkeypatch.setattr(tuning, "train", scored_by_values)
    result = tuning.tune(cfg, "rfs", trials=3)
    trials = _study(cfg, "rfs").get_trials()
    assert len(tuning.tuning_folds(tuning.trial_config(cfg, "rfs", {}), "rfs")) == 3
    assert [t.state for t in trials] == [TrialState.COMPLETE] + [TrialState.PRUNED] * 2
    assert trials[0].params["dropout"] == written
    assert [max(t.intermediate_values) for t in trials] == [2, 2, 2]  # pruned after fold 3 of 3
    assert result["trials"] == {"complete": 1, "pruned": 2, "fail": 0} and result["trial"] == 0
    assert read_tuned(cfg, "rfs")["values"] == {"dropout": written}

    client = MlflowClient(tracking.tracking_uri(cfg.paths.mlruns))
    experiment = client.get_experiment_by_name("hecktor-tune-rfs")
    states = {
        r.data.tags["optuna_trial"]: r.data.tags["optuna_state"]
        for r in client.search_runs([experiment.experiment_id])
        if "optuna_trial" in r.data.tags
    }
    assert states == {"0": "COMPLETE", "1": "PRUNED", "2": "PRUNED"}


@pytest.mark.slow
def test_two_workers_share_one_study(project):
    params, cfg = project
    workers = [
        subprocess.Popen(
            _hecktor(params, "tune", "seg", "--trials", "4"), stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    trials = _study(cfg).get_trials()
    assert len(trials) >= 4 and all(t.state == TrialState.COMPLETE for t in trials)
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert pids == {str(w.pid) for w in workers}  # both workers ran trials of the one study
    assert len({tuple(t.params.items()) for t in trials}) == len(trials)
    assert read_tuned(cfg, "seg")["trials"]["complete"] == len(trials)


@pytest.mark.slow
def test_a_killed_study_resumes_its_trial_from_the_checkpoint(project, caplog):
    params, _ = project
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["tiny"]["tune"]["seg"]["epochs"] = 6  # long enough to be killed mid-trial
    params.write_text(yaml.safe_dump(raw))
    cfg = load_config(params)
    worker = subprocess.Popen(
        _hecktor(params, "tune", "seg", "--trials", "1", "--no-track"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    checkpoints = cfg.paths.studies / tuning.study_name(cfg, "seg")
    while (
        not list(checkpoints.glob("trial-*/seg/resume/tuning/last.pt")) and time.time() < deadline
    ):
        assert worker.poll() is None, "the trial ended before it could be killed"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert [t.state for t in _study(cfg).get_trials()] == [TrialState.RUNNING]

    with caplog.at_level(logging.INFO):
        result = tuning.tune(cfg, "seg", track=False, trials=1)
    dead, retry = _study(cfg).get_trials()
    assert (dead.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert retry.params == dead.params and retry.user_attrs["retry_of"] == dead.number
    assert "resuming" in caplog.text  # the retry continued from the dead trial's last epoch
    assert result["trial"] == retry.number


def test_no_search_space_writes_empty_values(project):
    _, cfg = project
    result = tuning.tune(cfg, "hpv", trials=0)
    assert result["values"] == {} and read_tuned(cfg, "hpv")["study"] is None
    assert apply_tuned(cfg).hpv == cfg.hpv


def test_password_is_not_written_with_the_storage(project):
    _, cfg = project
    url = "postgresql://optuna:secret@db.example:5432/studies"
    cfg = cfg.model_copy(update={"tune": override(cfg.tune, storage=url)})
    assert tuning.storage_label(cfg) == "postgresql://optuna:***@db.example:5432/studies"


def test_a_task_without_a_search_space_is_refused_by_name(tiny_config):
    with pytest.raises(
        ConfigError, match=r"tune volume: no search space in params \(tune.volume\)"
    ):
        tuning.tune(tiny_config, "volume", track=False)


def test_paper_tuned_studies_start_from_the_paper_recipe():
    cfg = load_config(ROOT / "params.yaml", "paper_tuned")
    for task in ("seg", "hpv", "rfs"):
        first = tuning.written_values(cfg, task)
        assert set(first) == set(
            getattr(cfg.tune, task).space
        )  # the whole recipe, no partial trial
        section = getattr(cfg, task)
        assert first["train.lr"] == section.train.lr == 1e-4
    assert tuning.written_values(cfg, "seg")["train.weight_decay"] == 0.0


def test_a_dimension_or_zero_draws_zero_and_the_range_and_enqueues_either():
    space = {"train.weight_decay": SearchDim(low=1e-7, high=1e-3, log=True, or_zero=True),
             "dropout": SearchDim(low=0.0, high=0.5)}  # fmt: skip
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for values in ({"train.weight_decay": 0.0, "dropout": 0.2},
                   {"train.weight_decay": 1e-5, "dropout": 0.1}):  # fmt: skip
        study.enqueue_trial(tuning.params_of(space, values))
        trial = study.ask()
        assert tuning.sample(trial, space) == values
        study.tell(trial, 0.0)
        assert tuning.values_of(space, study.trials[-1].params) == values
    drawn = []
    for _ in range(30):
        trial = study.ask()
        drawn.append(tuning.sample(trial, space)["train.weight_decay"])
        study.tell(trial, 0.0)
    assert 0.0 in drawn and all(v == 0 or 1e-7 <= v <= 1e-3 for v in drawn)
    assert any(v > 0 for v in drawn)


def test_tuning_switched_off_writes_no_values_and_says_why(project):
    _, cfg = project
    cfg = cfg.model_copy(update={"tune": override(cfg.tune, enabled=False)})
    result = tuning.tune(cfg, "seg", track=False)
    assert result["values"] == {} and "tune.enabled is false" in result["why"]
    assert read_tuned(cfg, "seg")["tuned_for"]["profile"] == "tiny"
    assert not (Path(cfg.paths.studies) / "journal.log").exists()  # no study was opened
