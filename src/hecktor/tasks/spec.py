"""What the pipeline knows of a task, declared once (:class:`TaskSpec`), and the values a task's
pieces hand on: a bundle's contents when it is registered, one patient's inputs and outcome when
it is predicted.

A spec is light: its code (runner, bundle contents, predictor, scoring stage) is named as
``"module:function"`` and imported when it runs, so reading the registry (the CLI's choices,
``predict``'s order) loads no training, scoring or deep-learning code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hecktor.config import Config
from hecktor.data.folds import folds_of, load_splits

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from pydantic import BaseModel

Fold = tuple[str, str, list[str], list[str]]  # name, kind (kfold, holdout, loco), train, val
# A task's code: the function itself, or "module:function", imported when it runs
Stage = Callable[..., Any] | str
MASK = "<PatientID>.nii.gz"  # in a spec's outputs: the task's labels, written as a mask file


@dataclass(frozen=True)
class BundleContent:
    """What a task's bundle holds beside the common manifest."""

    members: list[dict[str, Any]]  # one per weights file: {"file", "fold", ...}
    files: dict[str, Path]  # file name in the bundle -> checkpoint to copy
    metrics: dict[str, Any]  # cross-validated figures, for the record
    extra: dict[str, Any] = field(default_factory=dict)  # other manifest entries


@dataclass(frozen=True)
class Outcome:
    """One task's prediction for one patient: its columns of ``predictions.csv`` and, for a
    segmentation task, labels on the prepared grid (0 background, 1 GTVp, 2 GTVn)."""

    columns: dict[str, float | int] = field(default_factory=dict)
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None  # (classes, Z, Y, X) on the prepared grid, float16
    members: dict[str, float] = field(default_factory=dict)  # each member model's value, by fold


@dataclass(frozen=True)
class PatientInputs:
    """What a task's predictor sees of a new patient."""

    patient: str
    image: np.ndarray  # (2, Z, Y, X): CT and PET on the prepared grid
    clinical: pd.DataFrame  # one row, official column names; None or NaN is unknown
    upstream: dict[str, Outcome]  # the outcomes of the tasks it depends on


Predict = Callable[[PatientInputs], Outcome]


def resolve(stage: Stage) -> Callable[..., Any]:
    """The function a stage names."""
    if callable(stage):
        return stage
    module, _, name = stage.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class TaskSpec:
    """A task, declared once.

    Its code: ``build(cfg, mode)`` makes the runner the training engine drives (see
    :class:`hecktor.training.engine.Task`); ``bundle(cfg, metrics)`` says what its registered
    bundle holds, given its ``metrics/<name>.json``; ``predictor(bundle, device, autocast)`` loads
    a bundle for prediction and returns a function of :class:`PatientInputs` to
    :class:`Outcome`; ``crossval(cfg, track)`` scores the trained models and writes
    ``metrics/<name>.json`` with at least ``task``, ``score`` (``name``, ``value``: what the
    registry ranks versions by, higher is better) and ``headline`` (rows of
    :func:`hecktor.reports.headline_row`); ``inputs(cfg)``, if any, makes what the task trains
    on from its upstream tasks' models, before training or tuning.
    """

    name: str  # CLI word; models/<name>, metrics/<name>.json, MLflow experiment hecktor-<name>
    challenge: int  # HECKTOR task number: its patients and splits (column task<N> of the index)
    title: str  # one line, for help and reports
    section: str  # the config section holding its settings
    build: Stage
    bundle: Stage
    predictor: Stage
    crossval: Stage
    upstream: tuple[str, ...] = ()  # tasks whose models it starts from or reads
    outputs: dict[str, str] = field(default_factory=dict)  # MASK or CSV column -> its meaning
    modes: str | None = None  # the setting listing the input modes it trains a set of folds for
    evaluation_only: frozenset[str] = frozenset()  # settings that change scores, not models
    inputs: Stage | None = None

    @property
    def registry_name(self) -> str:
        return f"hecktor-{self.name}"

    @property
    def split_key(self) -> str:
        return f"task{self.challenge}"

    def settings(self, cfg: Config) -> BaseModel:
        return getattr(cfg, self.section)

    def model_settings(self, cfg: Config) -> dict:
        """Its settings that its trained models depend on."""
        return self.settings(cfg).model_dump(mode="json", exclude=set(self.evaluation_only))

    def input_modes(self, cfg: Config) -> tuple[str, ...]:
        """The input modes it trains one set of folds for (``""``: one set)."""
        return tuple(getattr(self.settings(cfg), self.modes)) if self.modes else ("",)

    def folds(self, cfg: Config) -> tuple[list[Fold], list[str]]:
        """(name, kind, train, val) of every fold it trains, and its test patients.

        ``kind`` is ``kfold``/``holdout`` or ``loco``; the leave-one-centre-out folds come beside
        the configured split when the task's ``loco`` flag is set.
        """
        settings: Any = self.settings(cfg)
        splits = load_splits(cfg.paths.splits)
        kind = settings.split
        folds = [(n, kind, t, v)
                 for n, t, v in folds_of(splits, self.split_key, kind, settings.folds)]  # fmt: skip
        if getattr(settings, "loco", False) and kind != "loco":
            folds += [(n, "loco", t, v) for n, t, v in folds_of(splits, self.split_key, "loco")]
        return folds, list(splits[self.split_key].get("test", []))
