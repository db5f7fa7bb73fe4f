"""The one training loop of the project, shared by every task.

A task (see :class:`Task`) says how to build its model, compute its loss on a batch and score a
validation pass. The engine does the rest, once: epochs, Adam, mixed precision, a checkpoint after
every epoch, resume after a kill, the kept epoch (the best by the task's validation score, or the last),
stochastic weight averaging, seeding, progress bars, MLflow logging, and DDP under ``torchrun``
(rank 0 alone logs and checkpoints).

Numerics never end a run by accident. ``precision: auto`` takes reduced precision only after a
start-up check of the task's own network on its first real batch agrees with fp32 on this machine
(reduced-precision kernels differ between CPUs and have produced NaN gradients on some). Every
step's loss and gradient norm are checked: a non-finite step is skipped (no weight or optimizer
update) and counted, and a few consecutive ones under reduced precision switch the run to fp32 from
the last good weights. Only a non-finite step in fp32 is an error. The precision used, why, and any
fallback are saved in every checkpoint, so a resumed run continues exactly as it would have.

Every epoch reseeds all random number generators from (seed, epoch, rank), so a run resumed from
its checkpoint after epoch k continues exactly as an uninterrupted run would. Checkpoints hold only
tensors and plain values and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from hecktor.checkpoints import clear_fold, load_checkpoint, save_checkpoint
from hecktor.config import TrainConfig
from hecktor.data.loading import augment_batch, init_worker, seed_everything
from hecktor.devices import Autocast, autocast_for, precision_for, resolve_device
from hecktor.errors import UserError
from hecktor.tracking import Tracker

log = logging.getLogger(__name__)


# the device's augmentation draws its own random stream, not the loader's
_DEVICE_STREAM = 104_729


class Task(Protocol):
    """What differs between tasks; everything else is the engine's."""

    name: str

    def build_model(self) -> nn.Module: ...

    def train_dataset(self, patients: Sequence[str]) -> Dataset: ...

    def sampler(self, dataset: Dataset, seed: int) -> Sampler | None:
        """A task-specific sampler (e.g. class-balanced), or None for plain shuffling."""
        ...

    def setup(self, train_patients: Sequence[str]) -> None:
        """Fit what depends on the training fold (e.g. clinical encoding) before the model is built."""
        ...

    def state(self) -> dict:
        """Plain values saved beside the weights (what inference needs to rebuild the inputs)."""
        ...

    def warm_start(self, model: nn.Module) -> None:
        """Set a new training's initial weights (e.g. an upstream task's); resumes skip it."""
        ...

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor: ...

    def validate(
        self, model: nn.Module, patients: Sequence[str], device: torch.device, autocast: Autocast
    ) -> dict[str, float]:
        """Validation metrics; the key ``score`` (higher is better) selects the best epoch."""
        ...


@dataclass
class FitResult:
    """What a fit leaves behind: the best epoch and score, the history, and SWA's result."""

    out: Path
    best_epoch: int
    best_score: float
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None  # the final (last-epoch) weights, for in-process callers


# --------------------------------------------------------------------------- devices and DDP


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# consecutive non-finite steps under reduced precision before a run continues in fp32; fp16 AMP's
# loss scaler skips a few overflowing steps by design while it finds its scale
FALLBACK_AFTER = {"bf16": 3, "fp16": 16}
# a start-up check passes when reduced precision's gradient points where fp32's does and its loss
# is close: healthy kernels agree at a cosine of 0.999 or more (loss within 0.5 %) on the demo's
# networks; a faulty one can reach 0.93 by chance on one batch and then fail (README, Training
# engine)
MIN_GRADIENT_COSINE = 0.99
MAX_LOSS_DIFFERENCE = 0.05


@dataclass
class Precision:
    """The precision a run trains in, why, and its fallback to fp32 if one happened.

    Saved in every checkpoint (plain values), so that a resumed run trains as the uninterrupted one.
    """

    used: str  # bf16 | fp16 | fp32
    reason: str
    fallback: dict | None = None  # {"from", "epoch", "step"} once the run fell back to fp32
    streak: int = 0  # consecutive non-finite steps so far

    def to_dict(self) -> dict:
        return {"used": self.used, "reason": self.reason, "fallback": self.fallback,
                "streak": self.streak}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Precision:
        return cls(data["used"], data["reason"], data.get("fallback"), int(data.get("streak", 0)))

    def tags(self) -> dict[str, str]:
        tags = {"precision": self.used, "precision_reason": self.reason}
        if self.fallback:
            tags["precision_fallback"] = json.dumps(self.fallback)
        return tags


def _first(batch: Any, count: int) -> Any:
    """The first ``count`` samples of a batch (tensors sliced along dim 0, other values kept)."""
    if isinstance(batch, torch.Tensor):
        return batch[:count]
    if isinstance(batch, dict):
        return {k: _first(v, count) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_first(v, count) for v in batch)
    return batch


def _loss_and_gradient(
    task: Task, model: nn.Module, batch: dict, device: torch.device, autocast: Autocast
) -> tuple[float, dict[str, torch.Tensor]]:
    """One forward and backward of a copy of ``model``; global random state is left as it was."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)  # the same dropout masks in both precisions
        with autocast():
            loss = task.loss(probe, batch, device)
        loss.float().backward()
    grads = {n: p.grad.detach().float().flatten() for n, p in probe.named_parameters()
             if p.grad is not None}  # fmt: skip
    return float(loss.detach().float()), grads


def check_precision(
    task: Task, model: nn.Module, batch: dict, device: torch.device, precision: str
) -> tuple[str | None, dict[str, float]]:
    """Whether ``precision`` trains this network like fp32 does, on one real batch: why not (or
    None) and the measured agreement. Finite loss and gradients are required, a gradient cosine of
    at least :data:`MIN_GRADIENT_COSINE` and a relative loss difference of at most
    :data:`MAX_LOSS_DIFFERENCE`. On a GPU the check uses two samples, to fit beside training."""
    if device.type == "cuda":
        batch = _first(batch, 2)
    loss32, grads32 = _loss_and_gradient(task, model, batch, device, contextlib.nullcontext)
    loss, grads = _loss_and_gradient(task, model, batch, device, autocast_for(precision, device))
    if not math.isfinite(loss):
        return f"non-finite loss {loss}", {}
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    if bad:
        return f"non-finite gradient in {bad[0]}" + (
            f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        ), {}
    # float64: a faulty kernel's huge finite gradients must not overflow the cosine into NaN
    a = torch.cat([grads32[n] for n in grads32]).double()
    b = torch.cat([grads[n] for n in grads32]).double()
    norms = float(a.norm() * b.norm())
    cosine = float(a @ b) / norms if norms > 0 else 1.0
    difference = abs(loss - loss32) / max(abs(loss32), 1e-6)
    measured = {"gradient_cosine": round(cosine, 4), "loss_difference": round(difference, 4)}
    if not cosine >= MIN_GRADIENT_COSINE:  # NaN fails too
        return (
            f"gradient cosine {cosine:.3f} with fp32 (at least {MIN_GRADIENT_COSINE} needed)",
            measured,
        )
    if difference > MAX_LOSS_DIFFERENCE:
        return f"loss differs from fp32 by {100 * difference:.1f}%", measured
    return None, measured


def choose_precision(
    task: Task, cfg: TrainConfig, model: nn.Module, first_batch: Callable[[], dict],
    device: torch.device, world: int = 1,
) -> Precision:  # fmt: skip
    """The precision a new run trains in: as configured, or for ``auto`` reduced precision where
    this device offers it and :func:`check_precision` passes on the task's first batch, else fp32.
    Under DDP every rank checks and all must pass."""
    if cfg.precision != "auto":
        return Precision(cfg.precision, f"train.precision: {cfg.precision}")
    candidate = precision_for("auto", device)
    if candidate == "fp32":
        return Precision("fp32", "auto: this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    problem, measured = check_precision(task, model, first_batch(), device, candidate)
    if world > 1:
        passed = torch.tensor([0.0 if problem else 1.0], device=device)
        dist.all_reduce(passed, op=dist.ReduceOp.MIN)
        if passed.item() == 0 and problem is None:
            problem = "another rank's check failed"
    if problem:
        return Precision("fp32", f"auto: {candidate} failed its start-up check ({problem})")
    shown = ", ".join(f"{k} {v}" for k, v in measured.items())
    return Precision(candidate, f"auto: {candidate} agrees with fp32 on this machine ({shown})")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- the loop


@dataclass
class _Loop:
    task: Task
    cfg: TrainConfig
    device: torch.device
    precision: Precision
    rank: int
    world: int
    tracker: Tracker = field(default_factory=lambda: Tracker(None))
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        self.use(self.precision)

    def use(self, precision: Precision) -> None:
        self.precision = precision
        self.autocast = autocast_for(precision.used, self.device)
        # fp16 AMP scales the loss so small gradients survive half precision (any device)
        fp16 = precision.used == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None

    def loader(self, dataset: Dataset, epoch: int) -> DataLoader:
        shared = self.cfg.seed * 100_003 + epoch * 1_009  # the epoch's, alike on every rank
        seed = shared + self.rank
        seed_everything(seed)
        transform = getattr(dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed)
        on_device = getattr(dataset, "device_transform", None)
        if hasattr(on_device, "set_random_state"):
            on_device.set_random_state(seed + _DEVICE_STREAM)
        workers = {
            "num_workers": self.cfg.num_workers,
            "worker_init_fn": partial(init_worker, seed) if self.cfg.num_workers else None,
            "pin_memory": self.device.type == "cuda",
        }
        sampler = self.task.sampler(dataset, shared)  # one epoch for all ranks to share
        if sampler is None and self.world > 1:
            sampler = DistributedSampler(
                dataset, self.world, self.rank, shuffle=True, seed=self.cfg.seed
            )
            sampler.set_epoch(epoch)
        elif sampler is None:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        if getattr(sampler, "yields_batches", False):  # the task composes its own batches
            if self.world > 1:  # each process its own share of the epoch
                if not hasattr(sampler, "shard"):
                    raise UserError(f"{self.task.name}: its batch sampler cannot be sharded "
                                     "across processes; every process would train on the same "
                                     "batches")  # fmt: skip
                sampler = sampler.shard(self.rank, self.world)
            return DataLoader(dataset, batch_sampler=sampler, **workers)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            drop_last=self.cfg.drop_last and len(dataset) >= self.cfg.batch_size * self.world,
            generator=torch.Generator().manual_seed(seed),
            **workers,
        )

    def batches(self, dataset: Dataset, loader: DataLoader) -> Iterator[tuple[dict, float]]:
        """The loader's batches, each with the seconds spent waiting for it, transformed on the
        device where the dataset says so (``device_transform``)."""
        on_device = getattr(dataset, "device_transform", None)
        batches = iter(loader)
        while True:
            began = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - began
            if batch is None:
                return
            yield (
                (batch if on_device is None else augment_batch(on_device, batch, self.device)),
                waited,
            )

    def _all_ranks(self, good: bool) -> bool:
        """Whether the step is good on every rank (a loss can be non-finite on one rank only)."""
        if self.world == 1:
            return good
        flag = torch.tensor([1.0 if good else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict
    ) -> tuple[float, str | None]:
        """One update; returns the loss and what was non-finite (the step was then skipped)."""
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.task.loss(model, batch, self.device)
        finite_loss = bool(torch.isfinite(loss.detach()))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()  # on every rank, whatever the loss: DDP synchronises gradients here
        norm = nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        bad = None if finite_loss else "loss"
        bad = bad or (None if bool(torch.isfinite(norm)) else "gradient")
        if not self._all_ranks(bad is None):
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:  # as the scaler does for an overflow: a smaller scale
                self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
            return float("nan"), bad or "loss or gradient on another rank"
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return float(loss.detach()), None

    def _non_finite(self, what: str, epoch: int, step: int) -> None:
        """Count a skipped step; fall back to fp32 after a streak; fail only in fp32."""
        used = self.precision.used
        if used == "fp32":
            raise FloatingPointError(
                f"{self.task.name}: non-finite {what} at epoch {epoch}, step {step}, in fp32"
            )
        self.precision.streak += 1
        if self.precision.streak >= FALLBACK_AFTER.get(used, 1):
            self._fall_back(epoch, step)

    def _fall_back(self, epoch: int, step: int) -> None:
        """Continue in fp32 from the current weights: the skipped steps never changed them."""
        used, streak = self.precision.used, self.precision.streak
        fallback = {"from": used, "epoch": epoch, "step": step}
        self.use(Precision("fp32", self.precision.reason, fallback))
        if self.rank == 0:
            log.warning("%s: %d consecutive non-finite steps under %s (epoch %d, step %d): "
                        "continuing in fp32 from the last good weights", self.task.name,
                        streak, used, epoch, step)  # fmt: skip
            self.tracker.set_tags(self.precision.tags())

    def _learning_rate(self, epoch: int, step: int, steps: int) -> float:
        """The scheduled learning rate: a pure function of the position, so resume is exact."""
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        done = ((epoch - 1) + (step - 1) / max(steps, 1)) / self.cfg.epochs
        return self.cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))

    def train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Dataset,
        epoch: int,
        label: str = "epoch",
        schedule: bool = True,
    ) -> tuple[float, int, float]:
        """One pass over the data; returns the mean loss of the good steps (averaged over ranks),
        the number of skipped, non-finite steps and the fraction of the epoch spent waiting for
        data. ``schedule``: set the learning rate of ``train.lr_schedule`` (SWA keeps its own)."""
        model.train()
        total = torch.zeros(2, dtype=torch.float64)
        skipped = 0
        loader = self.loader(dataset, epoch)
        bar = tqdm(total=len(loader), desc=f"{self.task.name} {label}", leave=False,
                   disable=self.rank != 0, unit="batch")  # fmt: skip
        began, waited = time.perf_counter(), 0.0
        for step, (batch, wait) in enumerate(self.batches(dataset, loader), 1):
            waited += wait
            bar.update()
            if schedule:
                for group in optimizer.param_groups:
                    group["lr"] = self._learning_rate(epoch, step, len(loader))
            loss, bad = self._step(model, optimizer, batch)
            if bad is not None:
                skipped += 1
                self._non_finite(bad, epoch, step)
                continue
            self.precision.streak = 0
            total += torch.tensor([loss, 1.0], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        data_wait = waited / max(time.perf_counter() - began, 1e-9)
        if skipped and self.rank == 0:
            log.warning("%s %s: %d non-finite step(s) skipped", self.task.name, label, skipped)
        if skipped and not total[1] and self.precision.used != "fp32":
            self._fall_back(epoch, skipped)  # not one good step: a short epoch's streak is enough
        if self.world > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if total[1] else float("nan"), skipped, data_wait


def _setup(task: Task, cfg: TrainConfig, precision: Precision, tracker: Tracker | None) -> _Loop:
    rank, world = distributed()
    device = resolve_device(cfg.device)
    tracker = tracker if rank == 0 and tracker is not None else Tracker(None)
    return _Loop(task, cfg, device, precision, rank, world, tracker)


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _wrap(model: nn.Module, loop: _Loop) -> nn.Module:
    if loop.world == 1:
        return model
    ids = [loop.device.index] if loop.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _announce(loop: _Loop, out: Path) -> None:
    if loop.rank == 0:
        log.info(
            "%s: %s in %s (%s)", loop.task.name, out, loop.precision.used, loop.precision.reason
        )
        loop.tracker.set_tags(loop.precision.tags())
        # batch sizes are per process, as the paper's per-GPU ones: what one update averages over
        loop.tracker.set_tags({"effective_batch_size": str(loop.cfg.batch_size * loop.world),
                               "processes": str(loop.world)})  # fmt: skip


@dataclass
class _Progress:
    """How far a fit got: the next epoch, the best epoch so far and the history (in ``last.pt``)."""

    start: int = 1
    best_epoch: int = 0
    best_score: float = -math.inf
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def _resumable(loop: _Loop, out: Path, state_dir: Path, key: str, model: nn.Module) -> dict | None:
    """``last.pt`` if it was written under ``key``; otherwise the fold starts afresh: its
    checkpoints are removed and ``model`` gets the task's initial weights."""
    last = state_dir / "last.pt"
    state = load_checkpoint(last, loop.device) if last.is_file() else None
    if state is not None and state.get("key") != key:
        log.warning(
            "%s: %s was written under another config; starting afresh", loop.task.name, last
        )
        state = None
    if state is None and loop.rank == 0:
        for folder in {out, state_dir}:  # one folder unless the state lives apart
            clear_fold(folder)
    if state is None:
        loop.task.warm_start(model)
    _barrier(loop.world)
    return state


def _resume(
    loop: _Loop, state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, out: Path
) -> _Progress:
    """Restore weights, optimizer, precision and loss scale from ``last.pt``: an exact resume."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    loop.use(Precision.from_dict(state["precision"]))
    if loop.scaler is not None and "scaler" in state:
        loop.scaler.load_state_dict(state["scaler"])
    progress = _Progress(
        int(state["epoch"]) + 1, int(state["best_epoch"]), float(state["best_score"]),
        dict(state["best_metrics"]), list(state["history"]),
    )  # fmt: skip
    if loop.rank == 0:
        log.info("%s: resuming %s after epoch %d", loop.task.name, out, progress.start - 1)
    return progress


def _choose_on_first_batch(loop: _Loop, model: nn.Module, dataset: Dataset, epoch: int) -> None:
    """Set a new run's precision, checked on the first batch its first epoch trains on."""

    def first_batch() -> dict:  # the epoch's loader reseeds, so training sees the same batch
        return next(loop.batches(dataset, loop.loader(dataset, epoch)))[0]

    loop.use(choose_precision(loop.task, loop.cfg, model, first_batch, loop.device, loop.world))


def _validate(loop: _Loop, model: nn.Module, val_ids: Sequence[str]) -> dict[str, float]:
    """The task's validation metrics of ``model`` in eval mode, without autograd."""
    model.eval()
    with torch.inference_mode():
        return loop.task.validate(model, val_ids, loop.device, loop.autocast)


def _save_weights(
    path: Path, loop: _Loop, model: nn.Module, epoch: int, metrics: dict[str, float], key: str
) -> None:
    """Write what inference loads (``best.pt``, ``swa.pt``): weights, task state and precision."""
    save_checkpoint(path, {
        "model": model.state_dict(), "epoch": epoch, "metrics": metrics,
        "task": loop.task.state(), "key": key, "precision": loop.precision.to_dict(),
    })  # fmt: skip


def _fit_epoch(
    loop: _Loop,
    model: nn.Module,
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    val_ids: Sequence[str],
    epoch: int,
    progress: _Progress,
    out: Path,
    key: str,
    state_dir: Path,
) -> None:
    """Train one epoch, validate when due (``best.pt`` on a new best), log it and save
    ``last.pt`` in ``state_dir``."""
    cfg = loop.cfg
    loss, skipped, wait = loop.train_epoch(wrapped, optimizer, dataset, epoch, f"epoch {epoch}")
    record: dict[str, float] = {
        "epoch": epoch,
        "train_loss": loss,
        "skipped_steps": skipped,
        "data_wait": wait,
    }
    if loop.rank == 0 and (epoch % cfg.val_every == 0 or epoch == cfg.epochs) and val_ids:
        metrics = _validate(loop, model, val_ids)
        record.update({f"val_{k}": v for k, v in metrics.items()})
        chosen = (
            epoch == cfg.epochs if cfg.select == "last" else metrics["score"] > progress.best_score
        )
        if chosen:
            progress.best_epoch, progress.best_score = epoch, float(metrics["score"])
            progress.best_metrics = dict(metrics)
            _save_weights(out / "best.pt", loop, model, epoch, metrics, key)
    progress.history.append(record)
    if loop.rank == 0:
        loop.tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best_epoch": progress.best_epoch,
            "best_score": progress.best_score,
            "best_metrics": progress.best_metrics,
            "history": progress.history,
            "key": key,
            "precision": loop.precision.to_dict(),
        }
        if loop.scaler is not None:
            state["scaler"] = loop.scaler.state_dict()
        save_checkpoint(state_dir / "last.pt", state)
        log.info("%s epoch %d/%d %s", loop.task.name, epoch, cfg.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))  # fmt: skip
    _barrier(loop.world)


def fit(
    task: Task,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    cfg: TrainConfig,
    out: Path | str,
    tracker: Tracker | None = None,
    key: str = "",
    state_dir: Path | str | None = None,
) -> FitResult:
    """Train ``task`` and keep the best epoch (``best.pt`` in ``out``); resume from ``last.pt``
    (in ``state_dir``, default ``out``: the optimizer state a resume needs, which is no model and
    need not be versioned with one) if present.

    ``key`` is the fold's resume key (:func:`hecktor.training.workflow.resume_key`): a ``last.pt``
    written under another key is not resumed: the fold's checkpoints are
    removed and training starts afresh.
    """
    out = Path(out)
    state_dir = Path(state_dir or out)
    out.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    loop = _setup(task, cfg, Precision("fp32", "until chosen"), tracker)
    seed_everything(cfg.seed)
    task.setup(train_ids)
    model = task.build_model().to(loop.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = _resumable(loop, out, state_dir, key, model)
    dataset = task.train_dataset(train_ids)
    if state is not None:
        progress = _resume(loop, state, model, optimizer, out)
    else:
        progress = _Progress()
        if progress.start <= cfg.epochs:
            _choose_on_first_batch(loop, model, dataset, progress.start)
    _announce(loop, out)
    wrapped = _wrap(model, loop)
    for epoch in range(progress.start, cfg.epochs + 1):
        _fit_epoch(
            loop, model, wrapped, optimizer, dataset, val_ids, epoch, progress, out, key, state_dir
        )
    if loop.rank == 0 and not (out / "best.pt").is_file():  # no validation set: the last epoch
        _save_weights(out / "best.pt", loop, model, cfg.epochs, {}, key)
        progress.best_epoch = cfg.epochs
    _barrier(loop.world)
    return FitResult(out, progress.best_epoch, progress.best_score, progress.best_metrics,
                     progress.history, model)  # fmt: skip


# SWA epochs draw other random streams than training epochs
_SWA_EPOCH_OFFSET = 10_000


def _ended_in(state_dir: Path, best: dict) -> Precision:
    """The precision training ended in (``last.pt``, else ``best.pt``), with no streak."""
    last = state_dir / "last.pt"
    ended = load_checkpoint(last).get("precision") if last.is_file() else None
    precision = Precision.from_dict(ended or best["precision"])
    precision.streak = 0
    return precision


def _swa_state(loop: _Loop, last: Path, swa_key: str) -> dict | None:
    """``swa_last.pt`` if it was written under ``swa_key`` (this fold's key and best epoch)."""
    state = load_checkpoint(last, loop.device) if last.is_file() else None
    return state if state is not None and state.get("key") == swa_key else None


def _swa_resume(
    loop: _Loop, state: dict, model: nn.Module, averaged: AveragedModel,
    optimizer: torch.optim.Optimizer, scheduler: SWALR,
) -> int:  # fmt: skip
    """Restore an interrupted SWA run from ``swa_last.pt``; returns the next epoch."""
    model.load_state_dict(state["model"])
    averaged.load_state_dict(state["averaged"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loop.use(Precision.from_dict(state["precision"]))
    return int(state["epoch"]) + 1


def _swa_epoch(
    loop: _Loop,
    model: nn.Module,
    wrapped: nn.Module,
    averaged: AveragedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: SWALR,
    dataset: Dataset,
    epoch: int,
    last: Path,
    swa_key: str,
) -> None:
    """Train one epoch at the SWA learning rate, add the weights to the average, log it and save
    ``swa_last.pt``."""
    label = f"swa epoch {epoch}"
    loss, skipped, wait = loop.train_epoch(
        wrapped, optimizer, dataset, _SWA_EPOCH_OFFSET + epoch, label, schedule=False
    )
    averaged.update_parameters(model)
    scheduler.step()
    if loop.rank == 0:
        loop.tracker.log_metrics({"swa_train_loss": loss, "swa_skipped_steps": skipped,
                                  "swa_data_wait": wait}, step=epoch)  # fmt: skip
        save_checkpoint(last, {
            "model": model.state_dict(), "averaged": averaged.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "key": swa_key, "precision": loop.precision.to_dict(),
        })  # fmt: skip
    _barrier(loop.world)


def _save_swa(
    loop: _Loop, averaged: AveragedModel, val_ids: Sequence[str], out: Path, epoch: int, key: str
) -> dict[str, float]:
    """Validate the averaged model (logged at the last SWA epoch) and write ``swa.pt``."""
    metrics: dict[str, float] = {}
    swa_model = averaged.module
    if val_ids:
        metrics = _validate(loop, swa_model, val_ids)
        loop.tracker.log_metrics(
            {f"swa_val_{k}": v for k, v in metrics.items()}, step=loop.cfg.swa_epochs
        )
    _save_weights(out / "swa.pt", loop, swa_model, epoch, metrics, key)
    return metrics


def swa(
    task: Task,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    cfg: TrainConfig,
    out: Path | str,
    tracker: Tracker | None = None,
    key: str = "",
    state_dir: Path | str | None = None,
) -> dict[str, float] | None:
    """Refine ``best.pt`` by stochastic weight averaging for ``swa_epochs``; write ``swa.pt``.

    Weights are averaged at the end of every epoch under a constant SWA learning rate, in the
    precision training ended in. Restartable from ``swa_last.pt`` (in ``state_dir``, default
    ``out``) like :func:`fit`. Returns the averaged model's validation metrics.
    """
    if cfg.swa_epochs == 0:
        return None
    out = Path(out)
    state_dir = Path(state_dir or out)
    best = load_checkpoint(out / "best.pt")
    loop = _setup(task, cfg, _ended_in(state_dir, best), tracker)
    task.setup(train_ids)
    model = task.build_model().to(loop.device)
    model.load_state_dict(best["model"])
    averaged = AveragedModel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.swa_lr, weight_decay=cfg.weight_decay)
    scheduler = SWALR(optimizer, swa_lr=cfg.swa_lr, anneal_epochs=1)
    last, done = state_dir / "swa_last.pt", out / "swa.pt"
    swa_key = f"{key}:{best['epoch']}"
    state = _swa_state(loop, last, swa_key)
    if state is not None and int(state["epoch"]) >= cfg.swa_epochs and done.is_file():
        # finished before: leave swa.pt untouched (later tasks key on its bytes)
        return dict(load_checkpoint(done, loop.device).get("metrics", {}))
    start = 1 if state is None else _swa_resume(loop, state, model, averaged, optimizer, scheduler)
    wrapped = _wrap(model, loop)
    dataset = task.train_dataset(train_ids)
    for epoch in range(start, cfg.swa_epochs + 1):
        _swa_epoch(
            loop, model, wrapped, averaged, optimizer, scheduler, dataset, epoch, last, swa_key
        )
    metrics = _save_swa(loop, averaged, val_ids, out, best["epoch"], key) if loop.rank == 0 else {}
    _barrier(loop.world)
    return metrics
