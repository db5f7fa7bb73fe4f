"""The tasks, declared once: :data:`TASKS` maps each name to its :class:`TaskSpec`.

What differs per task (model, loss, data, validation, bundle) lives in its own module
(:mod:`hecktor.tasks.seg`, :mod:`~hecktor.tasks.hpv`, :mod:`~hecktor.tasks.rfs`), its predictor in
:mod:`hecktor.inference.predictors` and its scoring stage in :mod:`hecktor.crossval`; the training engine, the pipeline stages, the registry, the
report and ``predict`` take everything else from the spec. Upstream tasks come first: this is the
order tasks are registered, reported and predicted in.
"""

from __future__ import annotations

from typing import Any

from hecktor.config import Config
from hecktor.errors import UserError
from hecktor.tasks.spec import MASK, Fold, TaskSpec, resolve


def _in_package(name: str, **declared: Any) -> TaskSpec:
    """A task whose settings are the config section ``name``, whose runner and bundle contents
    are ``build`` and ``bundle`` of :mod:`hecktor.tasks.<name>` and whose predictor is ``<name>``
    of :mod:`hecktor.inference.predictors`."""
    code = {stage: f"hecktor.tasks.{name}:{stage}" for stage in ("build", "bundle")}
    predictor = f"hecktor.inference.predictors:{name}"
    return TaskSpec(name=name, section=name, predictor=predictor, **code, **declared)


SEG = _in_package(
    "seg",
    challenge=1,
    title="Task 1: GTVp and GTVn segmentation",
    crossval="hecktor.crossval.seg:crossval_seg",
    outputs={MASK: "on the patient's CT grid: 0 background, 1 GTVp, 2 GTVn"},
    evaluation_only=frozenset({"min_lesion_mm3", "baseline_suv", "figure_cases"}),
)

HPV = _in_package(
    "hpv",
    challenge=3,
    title="Task 3: HPV status",
    crossval="hecktor.crossval.hpv:crossval_hpv",
    upstream=("seg",),
    outputs={
        "HPV_probability": "fold-ensemble mean logit through a sigmoid",
        "HPV_status": "1 = positive: logit > 0",
    },
)

RFS = _in_package(
    "rfs",
    challenge=2,
    title="Task 2: recurrence-free survival",
    crossval="hecktor.crossval.rfs:crossval_rfs",
    upstream=("seg", "hpv"),
    outputs={"RFS_risk": "standardised log-hazard: higher = earlier relapse"},
    modes="modes",
    evaluation_only=frozenset({"bootstrap", "chain"}),
    inputs="hecktor.derive:derive_rfs_inputs",
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (SEG, HPV, RFS)}


def spec_of(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def build_task(cfg: Config, name: str, mode: str | None = None) -> Any:
    """The runner of task ``name`` for the resolved config, wired to its inputs."""
    return resolve(spec_of(name).build)(cfg, mode)


def task_folds(cfg: Config, name: str) -> tuple[list[Fold], list[str]]:
    """(name, kind, train, val) of every fold task ``name`` trains, and its test patients."""
    return spec_of(name).folds(cfg)


def lineage(name: str) -> tuple[str, ...]:
    """The task and every task it depends on, upstream first (in registry order)."""
    needed = {name}
    for other in reversed(TASKS):
        if other in needed:
            needed |= set(spec_of(other).upstream)
    return tuple(t for t in TASKS if t in needed)


def config_sections(name: str) -> tuple[str, ...]:
    """The config sections a task's models depend on: the data's, then its lineage's settings."""
    sections = [TASKS[t].section for t in lineage(name)]
    return ("profile", "prepare", "split", *dict.fromkeys(sections))
