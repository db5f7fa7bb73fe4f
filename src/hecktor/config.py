"""Typed, validated configuration read from ``params.yaml``.

``params.yaml`` holds shared defaults per stage section and one block of overrides per scale
profile (``tiny``, ``demo``, ``paper``). :func:`load_config` merges the selected profile over the
defaults and validates the result; an unknown or mistyped key fails with its dotted name.
"""

from __future__ import annotations

import logging
import reprlib
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hecktor import planning
from hecktor.errors import UserError
from hecktor.fingerprints import json_digest

Profile = Literal["tiny", "demo", "learning", "paper", "paper_tuned"]
TUNABLE = ("seg", "hpv", "rfs")
Triple = tuple[float, float, float]
# settings that change how a training runs, not what it learns: a tuned file still applies
EXECUTION_ONLY = frozenset({"train.num_workers", "train.device", "augment.where", "cache_gb"})

log = logging.getLogger(__name__)


class ConfigError(UserError):
    """A params file that cannot be used; the message names the offending key."""


MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # a params file's nodes with every alias expanded (params.yaml: ~600)


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (each node counted by
    reference once, so the count costs as little as the document; a cycle counts once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    sizes[id(node)] = min(1 + sum(_expanded(c, sizes) for c in children), 1 << 62)
    return sizes[id(node)]


def read_yaml(path: Path | str) -> Any:
    """A YAML file as data, safely and within bounds: no Python objects (``safe_load``), at most
    :data:`MAX_YAML_BYTES`, and at most :data:`MAX_YAML_NODES` once aliases are expanded (a
    "billion laughs" of nested aliases is refused before it is built)."""
    path = Path(path)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES} bytes; not a params file")
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded(node, {})
        if size > MAX_YAML_NODES:
            raise ConfigError(f"{path}: its aliases expand to {size} nodes, more than the "
                              f"{MAX_YAML_NODES} a params file may hold")  # fmt: skip
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply; not a params file") from None
    finally:
        loader.dispose()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Section):
    """Every path the pipeline reads or writes, relative to the project root unless absolute."""

    synthetic: Path = Path("data/synthetic")
    oracle: Path = Path("data/oracle.csv")
    release: Path = Path("data/synthetic")
    prepared: Path = Path("data/prepared")
    splits: Path = Path("data/splits.json")
    models: Path = Path("models")
    predictions: Path = Path("data/predictions")
    metrics: Path = Path("metrics")
    plots: Path = Path("plots")
    reports: Path = Path("reports")
    mlruns: Path = Path("mlruns")
    studies: Path = Path("studies")  # Optuna journal and the checkpoints of running trials
    tuned: Path = Path("tuned")  # tuned values per task, read by training and scoring


class SynthConfig(_Section):
    """Synthetic cohort: size, grids (mm) and the share of patients in Tasks 2 and 3."""

    patients: int = Field(60, ge=4)
    seed: int = 2025
    centres: tuple[str, ...] = ("CHUM", "CHUP", "CHUS", "HGJ", "HMR", "MDA", "USZ")
    ct_spacing_mm: Triple = (2.0, 2.0, 3.0)
    pet_spacing_mm: Triple = (4.0, 4.0, 3.0)
    fov_mm: Triple = (256.0, 256.0, 300.0)
    task2_fraction: float = Field(0.8, gt=0, le=1)
    task3_fraction: float = Field(0.8, gt=0, le=1)
    rotated_fraction: float = Field(0.15, ge=0, le=1)
    workers: int = Field(1, ge=1)


class PrepareConfig(_Section):
    """The official HECKTOR preprocessing recipe with spacing and crop as parameters."""

    spacing_mm: Triple = (1.0, 1.0, 1.0)
    crop_mm: Triple = (200.0, 200.0, 310.0)
    crop_offset_mm: Triple = (0.0, 0.0, 0.0)
    # as the official script: move a box that would leave the scan back inside it (where the
    # scan is larger); false: keep it where it is and pad outside the scan
    inside_scan: bool = True
    interpolator: Literal["bspline", "linear"] = "bspline"
    ct_window_hu: tuple[float, float] = (-250.0, 250.0)
    ct_scale: float = Field(6.0, gt=0)
    brain_top_fraction: float = Field(0.25, gt=0, le=1)
    brain_zscore: float = 1.0
    workers: int = Field(1, ge=1)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """The prepared volume's shape (z, y, x): the box in voxels of the grid's spacing."""
        voxels = [round(c / s) for c, s in zip(self.crop_mm, self.spacing_mm, strict=True)]
        return tuple(reversed(voxels))  # type: ignore[return-value]

    @field_validator("spacing_mm", "crop_mm")
    @classmethod
    def _positive(cls, value: Triple) -> Triple:
        if min(value) <= 0:
            raise ValueError(f"must be positive, got {value}")
        return value


class SplitConfig(_Section):
    """Cross-validation folds, leave-one-centre-out, and the Task 1 hold-out."""

    folds: int = Field(5, ge=2)
    seed: int = 2025
    holdout_fraction: float = Field(0.053, gt=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)


class TrainConfig(_Section):
    """The training engine's settings; every task has its own block of them."""

    epochs: int = Field(500, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0)
    # constant (the paper's Adam), or cosine: per step from lr down to 1 % of it by the last epoch
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    val_every: int = Field(1, ge=1)
    # the weights a fit keeps (best.pt): the epoch with the best validation score (the paper's;
    # the validation patients then both choose and score the model, an optimistic figure), or
    # the last epoch (the validation patients only score it: honest out-of-fold figures)
    select: Literal["best", "last"] = "best"
    swa_epochs: int = Field(0, ge=0)
    swa_lr: float = Field(5e-5, gt=0)
    grad_clip: float = Field(12.0, gt=0)
    drop_last: bool = True  # keep every batch full (False: the last, smaller batch is used too)
    seed: int = 2025
    num_workers: int = Field(0, ge=0)
    device: str = "auto"


class AugmentConfig(_Section):
    """TrivialAugment: exactly one of these per sample, drawn uniformly, random magnitude."""

    rotate_deg: float = Field(15.0, ge=0)
    scale: tuple[float, float] = (0.9, 1.2)
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = Field(0.1, ge=0)
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    # where the augmentation runs: in the loader's workers, or on the training device on the batch;
    # auto: on a GPU, the device (README, GPU section: a CPU core cannot keep up there)
    where: Literal["auto", "workers", "device"] = "auto"


class SegConfig(_Section):
    """Task 1: DynUNet (or SegResNet) on CT+PET, DiceCE, TrivialAugment, SWA, small-lesion removal."""

    split: Literal["holdout", "kfold", "loco"] = "holdout"
    folds: tuple[int, ...] | None = None  # which folds of the split to train (None = all)
    network: Literal["dynunet", "segresnet"] = "dynunet"
    patch_size: tuple[int, int, int] = (192, 192, 192)  # voxels (z, y, x)
    base_filters: int = Field(32, ge=4)
    max_filters: int = Field(320, ge=4)
    foreground_prob: float = Field(0.9, ge=0, le=1)
    augment: AugmentConfig = AugmentConfig()
    min_lesion_mm3: float = Field(100.0, ge=0)
    sw_overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    baseline_suv: float = Field(2.5, gt=0)
    figure_cases: int = Field(3, ge=0)  # MIP rows: best to worst case by GTVp DSC
    train: TrainConfig = TrainConfig(epochs=500, batch_size=2, lr=1e-4, swa_epochs=50)


class HpvConfig(_Section):
    """Task 3: the Task 1 network with a classification head and clinical data."""

    split: Literal["kfold", "loco"] = "kfold"
    folds: tuple[int, ...] | None = None
    loco: bool = False  # also train leave-one-centre-out folds, for the centre-shift report
    patch_size: tuple[int, int, int] = (192, 192, 192)
    init_from_seg: bool = True
    # how image features and clinical data meet: the paper's concatenation, or (beyond it) a
    # linear clinical term plus an image term that starts at zero (hecktor.models.fusion)
    fusion: Literal["concat", "additive"] = "concat"
    mlp_width: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    seg_weight: float = Field(1.0, ge=0)
    cls_weight: float = Field(1.0, gt=0)
    positives_per_batch: int = Field(2, ge=1)
    foreground_prob: float = Field(0.9, ge=0, le=1)
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig(epochs=500, batch_size=4, lr=1e-4, swa_epochs=0)


class RfsConfig(_Section):
    """Task 2: 3D ResNet18 on CT, PET and masks with clinical data, Cox loss."""

    split: Literal["kfold", "loco"] = "kfold"
    folds: tuple[int, ...] | None = None
    loco: bool = False
    modes: tuple[Literal["gt", "pred"], ...] = (
        "gt",
        "pred",
    )  # train on true or predicted masks and HPV
    # what the registry serves: the fold ensemble of the models trained on predicted inputs (on
    # true ones if none), or the paper's chain: the best fold trained on true inputs, with HPV
    # from the best single Task 3 fold
    chain: Literal["ensemble", "paper"] = "ensemble"
    # the input grid: averaged over pool^3 blocks of the prepared grid (2: 2 mm from 1 mm), and a
    # box around the lesions (mm; null: the whole prepared volume, as the paper)
    input_pool: int = Field(1, ge=1)
    input_box_mm: tuple[float, float, float] | None = None
    # inputs kept in memory once computed, up to this many GB (Task 2 has no augmentation: a
    # patient's input is the same every epoch); 0: read from the stored case every time
    cache_gb: float = Field(8.0, ge=0)
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    fusion: Literal["concat", "additive"] = "concat"  # as hpv.fusion
    # beyond the paper: the masks' lesion volumes and PET values enter the fusion linearly
    lesion_features: bool = False
    mlp_width: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    bootstrap: int = Field(1000, ge=0)
    train: TrainConfig = TrainConfig(
        epochs=500, batch_size=16, lr=1e-4, drop_last=False, swa_epochs=0
    )

    @model_validator(mode="after")
    def _chain_is_trained(self) -> RfsConfig:
        if self.chain == "paper" and "gt" not in self.modes:
            raise ValueError("chain paper needs models trained on true inputs: add gt to modes")
        return self


class SearchDim(_Section):
    """One dimension of a search space: a float or int range (``log`` for a log scale) or choices.

    ``or_zero``: 0 is a value too, beside the range (a weight decay of 0, the paper's, or
    log-uniform above ``low``): each trial first draws whether the value is 0.
    """

    kind: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[bool | int | float | str, ...] | None = None
    or_zero: bool = False

    @model_validator(mode="after")
    def _complete(self) -> SearchDim:
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs choices")
            if self.or_zero:
                raise ValueError("or_zero is for ranges; list 0 among the choices instead")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"needs low < high, got low={self.low} high={self.high}")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scale dimension needs low > 0")
        return self

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is one this dimension can take."""
        if self.kind == "categorical":
            return value in (self.choices or ())
        if self.or_zero and value == 0:
            return True
        return self.low is not None and self.high is not None and self.low <= value <= self.high


class TuneTask(_Section):
    """One task's Optuna study: its size, the trials' shortened training, and the search space.

    ``space`` maps dotted keys of the task's section (``train.lr``, ``dropout``, ``augment.scale``
    ...) to a :class:`SearchDim`. ``trials: 0`` skips tuning: training uses the params as written.
    """

    trials: int = Field(20, ge=0)
    folds: tuple[int, ...] | None = None  # folds each trial trains (None: all of the task's split)
    epochs: int | None = Field(None, ge=1)  # epochs per trial (None: the task's train.epochs)
    swa_epochs: int | None = Field(None, ge=0)
    val_every: int | None = Field(None, ge=1)
    pruner: Literal["wilcoxon", "median", "none"] = "wilcoxon"
    p_threshold: float = Field(0.1, gt=0, lt=1)  # Wilcoxon: prune when worse than the best at p
    seed: int = 2025
    space: dict[str, SearchDim] = Field(default_factory=dict)


class TuneConfig(_Section):
    """Optuna storage and the study of each task; ``enabled: false`` trains the params as written
    (the ``paper`` profile: its recipe; ``paper_tuned`` tunes it)."""

    enabled: bool = True
    storage: str | None = None  # an Optuna storage URL; None: a journal file under paths.studies
    keep_checkpoints: bool = False  # keep every finished trial's checkpoints (disk-hungry)
    seg: TuneTask = TuneTask()
    hpv: TuneTask = TuneTask()
    rfs: TuneTask = TuneTask()


class Config(_Section):
    """The resolved configuration of one pipeline run."""

    profile: Profile = "demo"
    paths: Paths = Paths()
    synth: SynthConfig = SynthConfig()
    prepare: PrepareConfig = PrepareConfig()
    split: SplitConfig = SplitConfig()
    seg: SegConfig = SegConfig()
    hpv: HpvConfig = HpvConfig()
    rfs: RfsConfig = RfsConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _space_keys_exist(self) -> Config:
        for task in TUNABLE:
            for key in getattr(self.tune, task).space:
                try:
                    with_values(getattr(self, task), {key: None})
                except ConfigError as err:
                    raise ValueError(f"tune.{task}.space: {err}") from None
        return self

    @model_validator(mode="after")
    def _sizes_fit_the_network(self) -> Config:
        """Task 1's and Task 3's patches must be divisible as the planned network downsamples;
        said here, naming the key, not mid-run. (Task 3 also encodes whole prepared volumes: that
        shape is checked when the task starts, against the plan of the weights it starts from.)"""
        spacing = tuple(reversed(self.prepare.spacing_mm))
        shape = self.prepare.shape_zyx
        patch = planning.within(self.seg.patch_size, shape)
        _, strides = planning.kernels_and_strides(self.seg.network, patch, spacing)
        for size, what in (
            (patch, "seg.patch_size (within the prepared volume)"),
            (planning.within(self.hpv.patch_size, shape), "hpv.patch_size (within the prepared volume)"),
        ):  # fmt: skip
            problem = planning.misfit(size, strides, self.seg.network, what)
            if problem:
                raise ValueError(problem)
        return self

    def digest(self, sections: tuple[str, ...] | None = None) -> str:
        """Short stable hash of the resolved config (or of some sections), logged beside each run.

        A file that DVC tracks must hash only the sections its stage depends on: the whole
        config includes other tasks' tuned values, which are not that stage's inputs.
        """
        return json_digest(
            self.model_dump(mode="json", include=set(sections) if sections else None), 12
        )


S = TypeVar("S", bound=_Section)


def override(section: S, **values: Any) -> S:
    """A copy of ``section`` with the given non-None values, validated like the params file: a
    bad value is a :class:`ConfigError` naming its key (``synth.patients: ...``)."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as err:
        name = next((n for n, f in Config.model_fields.items() if f.annotation is type(section)),
                    type(section).__name__)  # fmt: skip
        raise ConfigError("; ".join(problems_of(err, name))) from None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of ``override`` win."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _shown(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut to ``limit`` characters (a mapping
    of a thousand keys, or an expanded alias, is not quoted whole)."""
    shorten = reprlib.Repr()
    shorten.maxlevel, shorten.maxdict, shorten.maxlist, shorten.maxstring = 2, 4, 4, limit
    text = shorten.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def problems_of(err: ValidationError, *prefix: str) -> list[str]:
    """Each error of a validation as ``dotted.key: message (got value)``."""
    return [f"{'.'.join(map(str, (*prefix, *e['loc'])))}: {e['msg']} (got {_shown(e.get('input'))})"
            for e in err.errors()]  # fmt: skip


def _validate(data: dict[str, Any], where: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        lines = problems_of(err)
        raise ConfigError(f"invalid params ({where}):\n  " + "\n  ".join(lines)) from None


def resolve(raw: dict[str, Any], profile: str | None = None) -> Config:
    """Merge the chosen profile over the shared defaults and validate.

    The shared sections alone and every profile are validated too, not only the chosen one, so a
    bad value fails when the file is read, whichever profile runs.
    """
    raw = dict(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: expected a mapping of profile names to overrides")
    name = profile or raw.get("profile", "demo")
    if name not in profiles and profiles:
        raise ConfigError(
            f"profile: unknown profile {name!r}; params.yaml defines {sorted(profiles)}"
        )
    for other, values in profiles.items():
        if other not in get_args(Profile):
            raise ConfigError(
                f"profiles.{other}: unknown profile; known: {list(get_args(Profile))}"
            )
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"profiles.{other}: expected a mapping of overrides")
    chosen = _validate({**raw, "profile": name}, "shared sections, before any profile")
    for other in sorted(profiles, key=lambda p: p != name):  # the chosen profile first
        config = _validate(
            {**_merge(raw, profiles[other] or {}), "profile": other}, f"profile {other}"
        )
        chosen = config if other == name else chosen
    return chosen  # without profiles: the shared sections as they are


def load_config(path: Path | str = "params.yaml", profile: str | None = None) -> Config:
    """Read ``params.yaml`` (or another file) and return the resolved, validated config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return rooted(resolve(raw, profile), path.parent)


def rooted(cfg: Config, root: Path) -> Config:
    """``cfg`` with its relative paths made relative to ``root`` (the params file's folder), so a
    command run from elsewhere finds the project's data, models and MLflow store. From the
    params file's own folder (the DVC stages), the paths stay as written."""
    if Path(root).resolve() == Path.cwd().resolve():
        return cfg
    paths = {k: v if v.is_absolute() else Path(root) / v for k, v in cfg.paths}
    return cfg.model_copy(update={"paths": Paths(**paths)})


def profile_keys(path: Path | str, profile: str) -> list[str]:
    """The dotted keys a profile of a params file sets over the shared sections."""
    raw = read_yaml(path) or {}
    return list(flat((raw.get("profiles") or {}).get(profile) or {}))


def with_values(section: S, values: dict[str, Any]) -> S:
    """A copy of ``section`` with dotted keys set (``{"train.lr": 1e-3}``), validated.

    A ``None`` value only checks that the key exists. An unknown key fails with its name.
    """
    data = section.model_dump()
    for key, value in values.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown key {key!r}")
            node = node[part]
        if leaf not in node or isinstance(node[leaf], dict):
            raise ConfigError(f"unknown key {key!r}")
        if value is not None:
            node[leaf] = value
    try:
        return type(section).model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid tuned values {values}: {err}") from None


def tuned_file(cfg: Config, task: str) -> Path:
    return Path(cfg.paths.tuned) / f"{task}.yaml"


def read_tuned(cfg: Config, task: str) -> dict[str, Any] | None:
    """The tuned-values file of ``task`` (written by ``hecktor tune``), or None if there is none."""
    path = tuned_file(cfg, task)
    if not path.is_file():
        return None
    data = read_yaml(path) or {}
    if not isinstance(data, dict) or not isinstance(data.get("values", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with 'values'")
    return data


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys (``{"train": {"lr": 1}}`` -> ``train.lr``);
    an empty mapping leaves no key."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def tuned_for(cfg: Config, task: str) -> dict[str, Any]:
    """What a task's tuned values were tuned for, as its tuned-values file records it: the
    profile, the task's settings as written (less those the study sets and those that change
    how a run goes, not what it learns) and the study's trial settings and search space."""
    spec: TuneTask = getattr(cfg.tune, task)
    settings = flat(getattr(cfg, task).model_dump(mode="json"))
    skip = set(spec.space) | EXECUTION_ONLY
    return {
        "profile": cfg.profile,
        "settings": {k: v for k, v in settings.items() if k not in skip},
        "tune": flat(spec.model_dump(mode="json", exclude={"trials"})),
    }


def _changes(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = [k for k in dict.fromkeys([*then, *now]) if then.get(k, "-") != now.get(k, "-")]
    return [f"{k} {then.get(k, '-')!r} (now {now.get(k, '-')!r})" for k in keys]


def tuned_difference(cfg: Config, task: str, tuned: dict[str, Any]) -> str | None:
    """Why a tuned-values file does not apply to ``cfg`` (None: it does): it was tuned for
    another profile, other settings of the task, or another search space."""
    if not tuned.get("values"):
        return None
    then = tuned.get("tuned_for")
    if not isinstance(then, dict):
        return "it does not record the configuration it was tuned for"
    now = tuned_for(cfg, task)
    if then.get("profile") != now["profile"]:
        return f"tuned for profile {then.get('profile')}, not {now['profile']}"
    for part, what in (("settings", f"{task} settings"), ("tune", f"tune.{task}")):
        changes = _changes(then.get(part) or {}, now[part])
        if changes:
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            return f"tuned for other {what}: {', '.join(changes[:3])}{more}"
    return None


def apply_tuned(
    cfg: Config, skip: tuple[str, ...] = (), strict: tuple[str, ...] = TUNABLE
) -> Config:
    """``cfg`` with each task's tuned values (``paths.tuned/<task>.yaml``) set over its params.

    A file tuned for another configuration (:func:`tuned_difference`) is refused for the tasks in
    ``strict`` (those a command trains or scores with) and ignored with a warning for the others
    (under ``dvc repro`` their own tune stage reruns the study before anything reads them).
    """
    updates = {}
    for task in TUNABLE:
        tuned = None if task in skip else read_tuned(cfg, task)
        if not tuned or not tuned.get("values"):
            continue
        path = tuned_file(cfg, task)
        difference = tuned_difference(cfg, task, tuned)
        if difference and task in strict:
            raise ConfigError(
                f"{path}: {difference}; tune for this configuration (`hecktor tune {task}`) "
                "or move the file away to train with the params as written"
            )
        if difference:
            log.warning("%s not applied: %s", path, difference)
            continue
        try:
            updates[task] = with_values(getattr(cfg, task), tuned["values"])
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return cfg.model_copy(update=updates) if updates else cfg


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000)
    return text.removesuffix("\n...\n").strip()


def annotated_yaml(cfg: Config, notes: dict[str, str], header: tuple[str, ...] = ()) -> str:
    """``cfg`` as YAML, with ``notes`` (dotted key -> where its value comes from) as comments."""

    def emit(data: dict[str, Any], prefix: str, depth: int) -> list[str]:
        lines = []
        for key, value in data.items():
            dotted, pad = f"{prefix}{key}", "  " * depth
            if isinstance(value, dict) and value:
                lines += [f"{pad}{key}:", *emit(value, f"{dotted}.", depth + 1)]
            else:
                note = f"  # {notes[dotted]}" if dotted in notes else ""
                lines.append(f"{pad}{key}: {_scalar(value)}{note}")
        return lines

    comments = [f"# {line}" for line in header]
    return "\n".join([*comments, *emit(cfg.model_dump(mode="json"), "", 0)]) + "\n"
