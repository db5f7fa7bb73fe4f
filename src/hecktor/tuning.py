"""Optuna studies, one per task: ``hecktor tune seg|hpv|rfs``.

A trial samples values from ``tune.<task>.space``, trains the task with :func:`train` (the same
function as the training stage) on ``tune.<task>.folds`` for ``tune.<task>.epochs``, and returns the
mean of the folds' validation scores. Task 2 trials train on true masks and HPV status only (they
are still validated on predicted ones). The best trial's values go to ``tuned/<task>.yaml``, which
training and scoring read (:func:`hecktor.config.apply_tuned`). A new study's first trial runs the
values ``params.yaml`` sets (where they lie in the space), so tuning never ends worse, on its own
objective, than not tuning.

* **Pruner**: Wilcoxon signed-rank (``WilcoxonPruner``). Each fold's score is reported with the
  fold as the step, and a trial stops once its folds are worse than the best trial's *on the same
  folds* at ``p_threshold``. Folds differ in difficulty far more than trials do, so pairing folds is
  what makes an early stop fair; median pruning (``pruner: median``) compares unpaired values. With
  few folds the test cannot reach the threshold (3 folds: p >= 0.125), so small studies never prune.
* **Storage**: a journal file (``studies/journal.log``) by default, safe for several worker
  processes on one machine; ``tune.storage`` (or ``--storage``) takes any Optuna storage URL, e.g.
  PostgreSQL for workers on several machines.
* **Faults**: a trial that raises (a NaN loss included) is recorded FAILED and the study goes on. A
  trial whose process died (kill, power loss) stays RUNNING in the storage; the next worker on that
  machine marks it FAILED and enqueues its values again, and the retry resumes from the dead trial's
  last checkpoint. Nothing found is ever deleted: the study's name is a hash of what it tunes (task
  settings, search space, data and code, but not the trial count), so changing any of them starts a
  new study beside the old ones, and raising ``trials`` continues the same one.
* **MLflow** (experiment ``hecktor-tune-<task>``): the study is a parent run, each trial a child
  and each fold of a trial a grandchild; the best trial's run is tagged ``best_trial=true``; the
  optimisation history and parameter importances are artifacts of the study run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import yaml
from filelock import FileLock
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState
from optuna.visualization import matplotlib as plots

from hecktor import io, locks, tracking
from hecktor.config import (
    TUNABLE,
    Config,
    ConfigError,
    SearchDim,
    TuneTask,
    override,
    tuned_file,
    tuned_for,
    with_values,
)
from hecktor.data.folds import load_splits
from hecktor.fingerprints import file_sha256, json_digest, prepared_digest, training_code
from hecktor.tasks import config_sections, spec_of, task_folds
from hecktor.training.workflow import train

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def study_name(cfg: Config, task: str) -> str:
    """``<task>-<profile>-<hash>``: the hash covers everything a trial's score depends on."""
    spec = getattr(cfg.tune, task)
    own = spec_of(task)
    sections = {
        s: getattr(cfg, s).model_dump(mode="json")
        for s in config_sections(task)[1:]
        if s != own.section
    }
    sections[own.section] = own.model_settings(cfg)
    splits = Path(cfg.paths.splits)
    settings = {
        "sections": sections,
        "tune": spec.model_dump(mode="json", exclude={"trials"}),
        "data": prepared_digest(cfg.paths.prepared),
        "splits": file_sha256(splits) if splits.is_file() else "",
        "code": training_code(("tuning.py",)),
    }
    return f"{task}-{cfg.profile}-{json_digest(settings, 10)}"


def storage_of(cfg: Config) -> optuna.storages.BaseStorage | str:
    """The configured storage URL, else a journal file under ``paths.studies``."""
    if cfg.tune.storage:
        return cfg.tune.storage
    path = Path(cfg.paths.studies) / "journal.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def storage_label(cfg: Config) -> str:
    """The storage as written to files and tags: a URL without its password, or the journal path."""
    if cfg.tune.storage:
        return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", cfg.tune.storage)
    return str(Path(cfg.paths.studies) / "journal.log")


def zero_flag(key: str) -> str:
    """The Optuna parameter that says whether an ``or_zero`` dimension is 0 in a trial."""
    return f"{key} is zero"


def sample(trial: Trial, space: dict[str, SearchDim]) -> dict[str, Any]:
    """One value per dimension of ``space``, keyed by its dotted name."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.or_zero and trial.suggest_categorical(zero_flag(key), [True, False]):
            values[key] = 0.0
        elif dim.kind == "categorical":
            values[key] = trial.suggest_categorical(key, list(dim.choices or ()))
        elif dim.kind == "int":
            values[key] = trial.suggest_int(
                key, int(dim.low or 0), int(dim.high or 0), step=int(dim.step or 1), log=dim.log
            )
        else:
            values[key] = trial.suggest_float(
                key, float(dim.low or 0), float(dim.high or 0), step=dim.step, log=dim.log
            )
    return values


def values_of(space: dict[str, SearchDim], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values from its Optuna parameters (the inverse of :func:`params_of`)."""
    return {
        key: 0.0 if params.get(zero_flag(key)) else params[key]
        for key in space
        if params.get(zero_flag(key)) or key in params
    }


def params_of(space: dict[str, SearchDim], values: dict[str, Any]) -> dict[str, Any]:
    """The Optuna parameters that make a trial draw ``values``, to enqueue it."""
    params: dict[str, Any] = {}
    for key, value in values.items():
        if space[key].or_zero:
            params[zero_flag(key)] = value == 0
        if not (space[key].or_zero and value == 0):
            params[key] = value
    return params


def trial_config(cfg: Config, task: str, values: dict[str, Any]) -> Config:
    """The config a trial trains under: the sampled values, the study's folds and short training."""
    spec: TuneTask = getattr(cfg.tune, task)
    section = with_values(getattr(cfg, task), values)
    short = override(
        section.train, epochs=spec.epochs, swa_epochs=spec.swa_epochs, val_every=spec.val_every
    )
    update: dict[str, Any] = {"train": short, "folds": spec.folds}
    if task != "seg":
        update["loco"] = False
    if task == "rfs":
        update["modes"] = ("gt",)
    return cfg.model_copy(update={task: section.model_copy(update=update)})


def tuning_folds(cfg: Config, task: str) -> list[tuple[str, list[str], list[str]]]:
    """The folds a trial trains: the task's folds (Tasks 2 and 3 keep their test set unseen).

    Task 1 under the hold-out split validates on an inner hold-out of the hold-out's training
    patients, so the hold-out that scores the final model never chooses its hyperparameters.
    """
    if task == "seg" and cfg.seg.split == "holdout":
        inner = load_splits(cfg.paths.splits)["task1"].get("tuning")
        if inner is None:
            raise ConfigError(f"{cfg.paths.splits}: no Task 1 tuning split; rerun `hecktor split`")
        return [("tuning", inner["train"], inner["val"])]
    return [(name, train, val) for name, _, train, val in task_folds(cfg, task)[0]]


def make_pruner(spec: TuneTask) -> optuna.pruners.BasePruner:
    if spec.pruner == "wilcoxon":
        with warnings.catch_warnings():  # "experimental" since Optuna 3.6
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=spec.p_threshold, n_startup_steps=2)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _sampler(task: str, spec: TuneTask, number: int) -> optuna.samplers.BaseSampler:
    # Seeded by task and trial number, not once per worker: two workers of one study must not draw
    # the same values, one worker must draw the same values on every machine, and two tasks with
    # the same range should not draw the same values either.
    seed = hashlib.sha256(f"{task}:{spec.seed}:{number}".encode()).digest()
    return optuna.samplers.TPESampler(seed=int.from_bytes(seed[:4], "little"))


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers on this machine and enqueue their values again."""
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or locks.alive(int(pid)):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        recovered.append(trial.number)
        log.warning(
            "trial %d of %s died with its worker: retrying it", trial.number, study.study_name
        )
    return recovered


def written_values(cfg: Config, task: str) -> dict[str, Any]:
    """The search space's values as the params file sets them, where they lie inside the space.

    A new study's first trial runs them, so the tuned values are never worse (on the study's
    objective) than training with the params as written.
    """
    spec: TuneTask = getattr(cfg.tune, task)
    section = getattr(cfg, task).model_dump(mode="json")
    values: dict[str, Any] = {}
    for key, dim in spec.space.items():
        value: Any = section
        for part in key.split("."):
            value = value[part]
        if not dim.holds(value):
            return {}  # a partial trial would mix the params with sampled values
        values[key] = value
    return values


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that use up the budget: finished or running, less the failures retried since."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(
        t.state in (*FINISHED, TrialState.RUNNING) and t.number not in retried for t in trials
    )


def trial_key(values: dict[str, Any]) -> str:
    return json_digest(values, 12)


def _run_trial(
    cfg: Config,
    task: str,
    study: optuna.Study,
    trial: Trial,
    study_run: tracking.Tracker,
    experiment: str,
    track: bool,
) -> float:
    """Train one trial on its folds and return the mean fold score (raise to fail or prune)."""
    spec: TuneTask = getattr(cfg.tune, task)
    trial.set_user_attr("worker", _worker())
    values = sample(trial, spec.space)
    out = Path(cfg.paths.studies) / study.study_name / f"trial-{trial_key(values)}"
    tags = tracking.run_tags(cfg, getattr(cfg, task).split) if track else {}
    tags |= {"optuna_study": study.study_name, "optuna_trial": str(trial.number)}
    scores: list[float] = []

    def on_fold(index: int, name: str, score: float) -> None:
        if not math.isfinite(score):
            raise FloatingPointError(f"fold {name}: validation score {score}")
        scores.append(score)
        trial.report(score, step=index)
        if trial.should_prune():
            raise optuna.TrialPruned(f"stopped after fold {name} (score {score:.4f})")

    pruned = None
    with tracking.run(
        experiment, f"trial-{trial.number}", tags, parent=study_run, enabled=track
    ) as run:
        trial.set_user_attr("mlflow_run_id", run.run_id or "")
        run.log_params(values)
        try:
            trial_cfg = trial_config(cfg, task, values)
            train(trial_cfg, task, track, out=out, parent=run, experiment=experiment,
                  on_fold=on_fold, folds=tuning_folds(trial_cfg, task))  # fmt: skip
        except optuna.TrialPruned as err:  # caught here, so the run ends FINISHED, tagged PRUNED
            pruned = err
            run.set_tags({"optuna_state": "PRUNED"})
        except Exception as err:
            run.set_tags({"optuna_state": "FAIL", "error": repr(err)[:500]})
            trial.set_user_attr("error", repr(err)[:500])
            _discard(cfg, out)
            raise
        if pruned is None:
            value = sum(scores) / len(scores)
            run.log_metrics({"value": value})
            run.set_tags({"optuna_state": "COMPLETE"})
    _discard(cfg, out)
    if pruned is not None:
        raise pruned
    return value


def _discard(cfg: Config, out: Path) -> None:
    if not cfg.tune.keep_checkpoints:
        shutil.rmtree(out, ignore_errors=True)


def _study_lock(cfg: Config, study: optuna.Study):
    """A file lock that the workers of one study share (the study storage has no transactions)."""
    lock = Path(cfg.paths.studies) / f"{study.study_name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock))


@contextlib.contextmanager
def _study_run(cfg: Config, study: optuna.Study, experiment: str, track: bool, task: str):
    """The study's MLflow run: created by the first worker, shared by the others."""
    if not track:
        yield tracking.Tracker(None)
        return
    with contextlib.ExitStack() as stack:
        with _study_lock(cfg, study):
            run_id = study.user_attrs.get("mlflow_run_id")
            if run_id:
                try:
                    MlflowClient().get_run(run_id)
                except Exception:  # the study was logged to another MLflow store
                    run_id = None
            tags = tracking.run_tags(cfg, getattr(cfg, task).split)
            tags |= {"optuna_study": study.study_name, "optuna_storage": storage_label(cfg)}
            run = stack.enter_context(
                tracking.run(experiment, f"study-{study.study_name}", tags, run_id=run_id)
            )
            study.set_user_attr("mlflow_run_id", run.run_id)
        yield run


def tune(cfg: Config, task: str, track: bool = True, trials: int | None = None) -> dict:
    """Run (or continue) the study of ``task`` up to its trial count; write ``tuned/<task>.yaml``."""
    if task not in TUNABLE:
        raise ConfigError(f"tune {task}: no search space in params (tune.{task}); tunable: "
                          f"{', '.join(TUNABLE)}")  # fmt: skip
    spec: TuneTask = getattr(cfg.tune, task)
    target = spec.trials if trials is None else trials
    out_file = tuned_file(cfg, task)
    if not cfg.tune.enabled or target == 0 or not spec.space:
        why = (f"tune.enabled is false in profile {cfg.profile}" if not cfg.tune.enabled
               else f"{target} trials, {len(spec.space)} dimensions")  # fmt: skip
        result = {"task": task, "study": None, "why": why, "values": {},
                  "tuned_for": tuned_for(cfg, task)}  # fmt: skip
        io.write_text(out_file, _render(result))
        log.info("%s: no tuning (%s): the params as written", task, why)
        return result
    tuning_folds(trial_config(cfg, task, {}), task)  # a missing split fails here, not per trial
    study = optuna.create_study(
        storage=storage_of(cfg),
        study_name=study_name(cfg, task),
        direction="maximize",
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    recover_interrupted(study)
    defaults = written_values(cfg, task)
    if defaults and not study.trials:  # a new study starts from the params as written
        with _study_lock(cfg, study):  # once, however many workers start together
            if not study.get_trials(deepcopy=False):
                study.enqueue_trial(
                    params_of(spec.space, defaults), user_attrs={"params_file": True}
                )
    experiment = tracking.experiment(f"hecktor-tune-{task}", cfg.paths.mlruns) if track else ""
    with _study_run(cfg, study, experiment, track, task) as study_run:
        while counted(study.get_trials(deepcopy=False)) < target:
            trial = study.ask()
            study.sampler = _sampler(task, spec, trial.number)
            try:
                value = _run_trial(cfg, task, study, trial, study_run, experiment, track)
            except optuna.TrialPruned as err:
                log.info("%s trial %d pruned: %s", task, trial.number, err)
                study.tell(trial, state=TrialState.PRUNED)
                continue
            except Exception as err:
                log.warning("%s trial %d failed: %r", task, trial.number, err)
                study.tell(trial, state=TrialState.FAIL)
                continue
            log.info("%s trial %d: %.4f %s", task, trial.number, value, trial.params)
            study.tell(trial, value)
        # Read, log and write under the lock: the worker that writes last has seen every trial.
        with _study_lock(cfg, study):
            result = summarise(cfg, task, study)
            if track:
                _log_study(study, study_run, result)
            io.write_text(out_file, _render(result))
    log.info("%s: best trial %d of %s, %.4f %s -> %s", task, result["trial"], result["study"],
             result["value"], result["values"], out_file)  # fmt: skip
    return result


def summarise(cfg: Config, task: str, study: optuna.Study) -> dict:
    """The tuned-values file's content: the best trial, its values and the study's counts."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        errors = sorted({str(t.user_attrs.get("error", "?")) for t in trials})
        raise ConfigError(
            f"study {study.study_name}: no trial completed "
            f"({len(trials)} trials; errors: {'; '.join(errors)[:1000]})"
        )
    best = max(complete, key=lambda t: (t.value, -t.number))
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in FINISHED}
    return {
        "task": task,
        "study": study.study_name,
        "storage": storage_label(cfg),
        "trial": best.number,
        "value": float(best.value),
        "trials": counts,
        "values": values_of(getattr(cfg.tune, task).space, best.params),
        "tuned_for": tuned_for(cfg, task),
    }


def _render(result: dict) -> str:
    head = (
        f"# Tuned values of {result['task']}: written by `hecktor tune {result['task']}`, read by "
        "training and scoring over params.yaml.\n"
    )
    return head + yaml.safe_dump(result, sort_keys=False)


def _log_study(study: optuna.Study, run: tracking.Tracker, result: dict) -> None:
    """Best-trial tags, the best values, and the history and importance plots on the study run."""
    client = MlflowClient()
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            with contextlib.suppress(Exception):  # a trial logged to another store
                client.set_tag(run_id, "best_trial", str(trial.number == result["trial"]).lower())
    run.log_metrics({"best_value": result["value"], "best_trial": result["trial"]})
    # tags, not params: a continued study may find another best
    run.set_tags({f"best.{k}": str(v) for k, v in result["values"].items()})
    run.log_dict(result, "tuned.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw in (
            ("optimization_history.png", plots.plot_optimization_history),
            ("param_importances.png", plots.plot_param_importances),
        ):
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as err:  # e.g. importances need 2+ completed trials
                log.info("no %s: %s", name, err)
                continue
            figure = axes.figure
            run.log_figure(figure, f"plots/{name}")
            plt.close(figure)
