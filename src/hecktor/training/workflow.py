"""``train(config, task)``: the plain function the CLI, the DVC stages and the tuner all call.

It trains the task on every fold of the configured split (then refines each by SWA), tracks a parent
MLflow run with one child run per fold, and writes ``models/<task>/<fold>/{best,swa}.pt`` and
``final.json`` plus ``models/<task>/summary.json`` (what DVC versions) and the training curves in
``plots/<task>/history.csv``. What a resume needs beyond the models (optimizer state in
``last.pt``, ``swa_last.pt``; the fold's MLflow run) is kept beside the MLflow store, in
``<paths.mlruns>/resume/<task>/``, out of DVC's outputs and cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from hecktor import io, locks, tracking
from hecktor.checkpoints import fold_score, trained_checkpoint, write_final
from hecktor.config import Config, read_tuned
from hecktor.fingerprints import file_sha256, json_digest, prepared_digest, training_code
from hecktor.tasks import build_task, config_sections, spec_of, task_folds
from hecktor.tracking import WEIGHTS_TAG
from hecktor.training.engine import distributed, fit, swa

log = logging.getLogger(__name__)


def resume_key(cfg: Config, task: str, fold: tuple[str, list[str], list[str]], data: str) -> str:
    """What a checkpoint must match to be resumed: task config, data, code and the fold's patients."""
    settings = spec_of(task).model_settings(cfg)
    return json_digest({"task": settings, "data": data, "fold": fold, "code": training_code()})


def _remove_stale_folds(out_root: Path, keep: set[str]) -> None:
    """Remove fold folders of an earlier split (this command wrote them)."""
    out_root.mkdir(parents=True, exist_ok=True)
    for stale in out_root.iterdir():
        if stale.is_dir() and stale.name not in keep | {"resume"}:
            shutil.rmtree(stale)


def _resumed_run(run_file: Path, key: str) -> str | None:
    """The MLflow run of a fold trained under the same key (to continue it after a kill)."""
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    return previous.get("run_id") if previous.get("key") == key else None


def _train_fold(runner, fold, task_cfg, fold_dir: Path, state_dir: Path, child: tracking.Tracker,
                key: str) -> dict:  # fmt: skip
    """Train one fold, refine it by SWA, record its final weights; its ``summary.json`` entry
    and its per-epoch history. The run is tagged with the final weights' digest, by which a
    registered model names the runs that trained it (the weights themselves are DVC's and, once
    registered, the model's: never copied into the run)."""
    name, train_ids, val_ids = fold
    rank, _ = distributed()
    child.log_params({"train_patients": len(train_ids), "val_patients": len(val_ids)})
    result = fit(runner, train_ids, val_ids, task_cfg.train, fold_dir, child, key, state_dir)
    swa_metrics = swa(runner, train_ids, val_ids, task_cfg.train, fold_dir, child, key, state_dir)
    if rank == 0:
        write_final(fold_dir, key, swa_ran=swa_metrics is not None)
        child.set_tags({WEIGHTS_TAG: file_sha256(trained_checkpoint(fold_dir))})
    child.log_metrics({f"best_{k}": v for k, v in result.best_metrics.items()})
    child.log_metrics({"best_epoch": result.best_epoch})
    if swa_metrics:
        child.log_metrics({f"swa_{k}": v for k, v in swa_metrics.items()})
    entry = {
        "train": len(train_ids), "val": len(val_ids), "best_epoch": result.best_epoch,
        "best": result.best_metrics, "swa": swa_metrics,
    }  # fmt: skip
    return {"entry": entry, "history": [{"fold": name, **row} for row in result.history]}


def _means(folds: dict[str, dict], prefixes: list[str]) -> dict[str, dict[str, float]]:
    """Mean validation metrics over folds, per input mode and variant (best epoch, after SWA)."""
    means = {}
    for prefix in prefixes:
        for variant in ("best", "swa"):
            values = [f[variant] for n, f in folds.items() if f[variant] and n.startswith(prefix)]
            if values:
                means[f"{prefix}{variant}"] = {
                    k: sum(v[k] for v in values) / len(values) for k in values[0]
                }
    return means


def _task_root(cfg: Config, task: str, out: Path | str | None) -> Path:
    return Path(out) / task if out is not None else Path(cfg.paths.models) / task


def train(
    cfg: Config,
    task: str = "seg",
    track: bool = True,
    *,
    out: Path | str | None = None,
    parent: tracking.Tracker | None = None,
    experiment: str = "",
    on_fold: Callable[[int, str, float], None] | None = None,
    folds: list[tuple[str, list[str], list[str]]] | None = None,
) -> dict:
    """Train ``task`` on its configured split; returns the summary written to ``summary.json``.

    The training stage writes to ``models/<task>`` under a parent run of its own. An Optuna trial
    passes ``out`` (its own folder), ``parent`` (the trial's run, in ``experiment``) and
    ``on_fold``, called with each fold's index, name and score as soon as it is known: it may raise
    to stop the remaining folds (a pruned trial), and may give its own ``folds``. The process
    that writes (rank 0) holds the task folder's lock: a second training of it stops at once.
    """
    writes = distributed()[0] == 0
    root = _task_root(cfg, task, out)
    with locks.writing(root, f"train {task}") if writes else contextlib.nullcontext():
        return _train(cfg, task, track, out, parent, experiment, on_fold, folds)


def _train(
    cfg: Config,
    task: str,
    track: bool,
    out: Path | str | None,
    parent: tracking.Tracker | None,
    experiment: str,
    on_fold: Callable[[int, str, float], None] | None,
    folds: list[tuple[str, list[str], list[str]]] | None,
) -> dict:
    """:func:`train`, under its lock."""
    spec = spec_of(task)
    task_cfg: Any = spec.settings(cfg)
    modes, runners, runs = _runs(cfg, task, folds)
    out_root = _task_root(cfg, task, out)
    resume_root = (
        out_root / "resume" if out is not None else Path(cfg.paths.mlruns) / "resume" / task
    )
    rank, _ = distributed()
    if rank == 0:
        _remove_stale_folds(out_root, {fold[0] for _, fold in runs})
        _remove_stale_folds(resume_root, {fold[0] for _, fold in runs})
    data = prepared_digest(cfg.paths.prepared)
    fingerprints = {p: getattr(r, "fingerprint", lambda: "")() for p, r in runners.items()}
    enabled = track and rank == 0
    if enabled and not experiment:
        experiment = tracking.experiment(spec.registry_name, cfg.paths.mlruns)
    tags = _tags(cfg, task, tuned=out is None) if enabled else {}
    summary: dict = {
        "task": task,
        "split": task_cfg.split,
        "upstream_digest": cfg.digest(config_sections(task)),
        "data": data,
        "folds": {},
        "modes": [m.rstrip("-") for m in modes if m],
    }
    history = []
    outer = (
        contextlib.nullcontext(parent)
        if parent is not None
        else tracking.run(experiment, f"train_{task}", tags, enabled=enabled)
    )
    with outer as parent:
        parent.log_params(tracking.flatten({spec.section: task_cfg.model_dump(mode="json")}))
        parent.log_dict(cfg.model_dump(mode="json"), "config.json")
        for prefix, fold in runs:
            name = fold[0]
            key = resume_key(cfg, task, fold, f"{data}:{fingerprints[prefix]}")
            # MLflow run ids live beside the store, not in the DVC-tracked model folder
            run_file = resume_root / f"{name}.json"
            with tracking.run(experiment, name, tags, parent=parent,
                              run_id=_resumed_run(run_file, key), enabled=enabled) as child:  # fmt: skip
                if rank == 0:
                    (out_root / name).mkdir(parents=True, exist_ok=True)
                    if child.run_id:
                        io.write_json(run_file, {"run_id": child.run_id, "key": key})
                trained = _train_fold(runners[prefix], fold, task_cfg, out_root / name,
                                      resume_root / name, child, key)  # fmt: skip
            summary["folds"][name] = trained["entry"]
            history += trained["history"]
            if on_fold is not None:
                on_fold(len(summary["folds"]) - 1, name, fold_score(trained["entry"]))
        means = _means(summary["folds"], modes)
        for label, values in means.items():
            parent.log_metrics({f"mean_{label}_{k}": v for k, v in values.items()})
        summary["mean"] = means
    if rank == 0:
        io.write_json(out_root / "summary.json", summary)
        plots = out_root if out is not None else Path(cfg.paths.plots) / task
        plots.mkdir(parents=True, exist_ok=True)
        io.write_text(plots / "history.csv", pd.DataFrame(history).to_csv(index=False))
    return summary


def _runs(cfg: Config, task: str, folds: list[tuple[str, list[str], list[str]]] | None):
    """The runs a training makes: a task may train one set of folds per input mode (Task 2: true
    or predicted masks and HPV), each with its own runner. Returns the mode prefixes, the runners
    by prefix and (prefix, (run name, train, val)) per run."""
    base_folds = folds or [(name, train, val) for name, _, train, val in task_folds(cfg, task)[0]]
    modes = [f"{m}-" if m else "" for m in spec_of(task).input_modes(cfg)]
    runners = {prefix: build_task(cfg, task, prefix.rstrip("-") or None) for prefix in modes}
    runs = [
        (prefix, (f"{prefix}{name}", tr, va)) for prefix in modes for name, tr, va in base_folds
    ]
    return modes, runners, runs


def _tags(cfg: Config, task: str, tuned: bool) -> dict[str, str]:
    """The runs' tags: versions, and which study and trial chose the values (if tuned)."""
    spec = spec_of(task)
    tags = tracking.run_tags(cfg, getattr(spec.settings(cfg), "split", None))
    values = read_tuned(cfg, spec.section) if tuned else None
    if values and values.get("values"):
        tags |= {f"tuned_{k}": str(values.get(k)) for k in ("study", "trial", "storage")}
    return tags
