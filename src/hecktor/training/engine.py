"""The one training loop of the project, shared by every task.

A task (see :class:`Task`) says how to build its model, compute its loss on a batch and score a
validation pass. The engine does the rest, once: epochs, Adam, mixed precision (bf16 autocast on CPUs
that support it, AMP on GPUs), a checkpoint after every epoch, resume after a kill, selection of the
best epoch by the task's validation score, stochastic weight averaging, seeding, progress bars,
MLflow logging, and DDP under ``torchrun`` (rank 0 alone logs and checkpoints).

Every epoch reseeds all random number generators from (seed, epoch, rank), so a run resumed from
its checkpoint after epoch k continues exactly as an uninterrupted run would. Checkpoints hold only
tensors and plain values and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from hecktor import io
from hecktor.config import TrainConfig
from hecktor.data.loading import seed_everything
from hecktor.tracking import Tracker

log = logging.getLogger(__name__)

Autocast = Callable[[], contextlib.AbstractContextManager]


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


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX), where autocast pays off."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def precision_for(name: str, device: torch.device) -> str:
    """Resolve ``auto``: bf16 on capable CPUs and GPUs, fp16 AMP on older GPUs, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast_for(precision: str, device: torch.device) -> Autocast:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save`` of tensors and plain values only.

    Saved through a file handle: given a path, torch names the archive's inner folder after the
    (random) temporary file, and equal weights would not give equal bytes for DVC to recognise.
    """
    with io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def trained_checkpoint(folder: Path | str) -> Path:
    """A fold's final weights: after SWA when it ran, else the best epoch's."""
    folder = Path(folder)
    for name in ("swa.pt", "best.pt"):
        if (folder / name).is_file():
            return folder / name
    # a ValueError: the command line reports it as one line, like any other unusable input
    raise ValueError(f"{folder}: no trained model (swa.pt or best.pt); run `hecktor train` first")


def model_from(task: Task, state: dict[str, Any], device: torch.device) -> nn.Module:
    """The checkpoint's network in eval mode, after restoring the task's fitted state.

    The task state (e.g. a clinical encoder fitted on the fold's training patients) comes first:
    it decides the network's input width.
    """
    if state.get("task") and hasattr(task, "load_state"):
        task.load_state(state["task"])
    model = task.build_model().to(device)
    model.load_state_dict(state["model"])
    return model.eval()


def load_trained(
    task: Task, folder: Path | str, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """A fold's trained model in eval mode, with its checkpoint."""
    state = load_checkpoint(trained_checkpoint(folder), device)
    return model_from(task, state, device), state


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- the loop


@dataclass
class _Loop:
    task: Task
    cfg: TrainConfig
    device: torch.device
    autocast: Autocast
    scaler: torch.amp.GradScaler | None
    rank: int
    world: int

    def loader(self, dataset: Dataset, epoch: int) -> DataLoader:
        seed = self.cfg.seed * 100_003 + epoch * 1_009 + self.rank
        seed_everything(seed)
        transform = getattr(dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed)
        sampler = self.task.sampler(dataset, seed)
        if sampler is None and self.world > 1:
            sampler = DistributedSampler(
                dataset, self.world, self.rank, shuffle=True, seed=self.cfg.seed
            )
            sampler.set_epoch(epoch)
        elif sampler is None:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        if getattr(sampler, "yields_batches", False):  # the task composes its own batches
            return DataLoader(dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            drop_last=self.cfg.drop_last and len(dataset) >= self.cfg.batch_size * self.world,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
        )

    def train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Dataset,
        epoch: int,
        label: str = "epoch",
    ) -> float:
        """One pass over the data; returns the mean loss (averaged over ranks)."""
        model.train()
        total = torch.zeros(2, dtype=torch.float64)
        bar = tqdm(self.loader(dataset, epoch), desc=f"{self.task.name} {label}", leave=False,
                   disable=self.rank != 0, unit="batch")  # fmt: skip
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.task.loss(model, batch, self.device)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{self.task.name}: non-finite loss {loss.item()} at epoch {epoch}"
                )
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
                optimizer.step()
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if self.world > 1:
            dist.all_reduce(total)
        return float(total[0] / max(total[1], 1.0))


def _setup(task: Task, cfg: TrainConfig) -> _Loop:
    rank, world = distributed()
    device = resolve_device(cfg.device)
    precision = precision_for(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
    return _Loop(task, cfg, device, autocast_for(precision, device), scaler, rank, world)


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _wrap(model: nn.Module, loop: _Loop) -> nn.Module:
    if loop.world == 1:
        return model
    ids = [loop.device.index] if loop.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def fit(
    task: Task,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    cfg: TrainConfig,
    out: Path | str,
    tracker: Tracker | None = None,
    config_hash: str = "",
) -> FitResult:
    """Train ``task`` and keep the best epoch (``best.pt``); resume from ``last.pt`` if present.

    A ``last.pt`` written under another config hash is not resumed: training starts afresh.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loop = _setup(task, cfg)
    tracker = tracker if loop.rank == 0 and tracker is not None else Tracker(None)
    seed_everything(cfg.seed)
    task.setup(train_ids)
    model = task.build_model().to(loop.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best_epoch, best_score, best_metrics, history = 1, 0, -math.inf, {}, []
    last = out / "last.pt"
    if last.is_file():
        state = load_checkpoint(last, loop.device)
        if state.get("config_hash") == config_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if loop.scaler is not None and "scaler" in state:
                loop.scaler.load_state_dict(state["scaler"])
            start = int(state["epoch"]) + 1
            best_epoch, best_score = int(state["best_epoch"]), float(state["best_score"])
            best_metrics, history = dict(state["best_metrics"]), list(state["history"])
            if loop.rank == 0:
                log.info("%s: resuming %s after epoch %d", task.name, out, start - 1)
        else:
            log.warning("%s: %s was written under another config; starting afresh", task.name, last)
    wrapped = _wrap(model, loop)
    dataset = task.train_dataset(train_ids)
    for epoch in range(start, cfg.epochs + 1):
        record: dict[str, float] = {
            "epoch": epoch,
            "train_loss": loop.train_epoch(wrapped, optimizer, dataset, epoch, f"epoch {epoch}"),
        }
        if loop.rank == 0 and (epoch % cfg.val_every == 0 or epoch == cfg.epochs) and val_ids:
            model.eval()
            with torch.inference_mode():
                metrics = task.validate(model, val_ids, loop.device, loop.autocast)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            if metrics["score"] > best_score:
                best_epoch, best_score, best_metrics = epoch, float(metrics["score"]), dict(metrics)
                save_checkpoint(
                    out / "best.pt",
                    {
                        "model": model.state_dict(),
                        "epoch": epoch,
                        "metrics": metrics,
                        "task": task.state(),
                    },
                )
        history.append(record)
        if loop.rank == 0:
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_score": best_score,
                "best_metrics": best_metrics,
                "history": history,
                "config_hash": config_hash,
            }
            if loop.scaler is not None:
                state["scaler"] = loop.scaler.state_dict()
            save_checkpoint(last, state)
            log.info("%s epoch %d/%d %s", task.name, epoch, cfg.epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))  # fmt: skip
        _barrier(loop.world)
    if loop.rank == 0 and not (out / "best.pt").is_file():  # no validation set: the last epoch
        save_checkpoint(
            out / "best.pt",
            {"model": model.state_dict(), "epoch": cfg.epochs, "metrics": {}, "task": task.state()},
        )
        best_epoch = cfg.epochs
    _barrier(loop.world)
    return FitResult(out, best_epoch, best_score, best_metrics, history, model)


def swa(
    task: Task,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    cfg: TrainConfig,
    out: Path | str,
    tracker: Tracker | None = None,
    config_hash: str = "",
) -> dict[str, float] | None:
    """Refine ``best.pt`` by stochastic weight averaging for ``swa_epochs``; write ``swa.pt``.

    Weights are averaged at the end of every epoch under a constant SWA learning rate. Restartable
    from ``swa_last.pt`` like :func:`fit`. Returns the averaged model's validation metrics.
    """
    if cfg.swa_epochs == 0:
        return None
    out = Path(out)
    loop = _setup(task, cfg)
    tracker = tracker if loop.rank == 0 and tracker is not None else Tracker(None)
    best = load_checkpoint(out / "best.pt", loop.device)
    task.setup(train_ids)
    model = task.build_model().to(loop.device)
    model.load_state_dict(best["model"])
    averaged = AveragedModel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.swa_lr, weight_decay=cfg.weight_decay)
    scheduler = SWALR(optimizer, swa_lr=cfg.swa_lr, anneal_epochs=1)
    start = 1
    last = out / "swa_last.pt"
    key = f"{config_hash}:{best['epoch']}"
    if last.is_file():
        state = load_checkpoint(last, loop.device)
        done = out / "swa.pt"
        if state.get("key") == key and int(state["epoch"]) >= cfg.swa_epochs and done.is_file():
            # finished before: leave swa.pt untouched (later tasks key on its bytes)
            return dict(load_checkpoint(done, loop.device).get("metrics", {}))
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            averaged.load_state_dict(state["averaged"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["epoch"]) + 1
    wrapped = _wrap(model, loop)
    dataset = task.train_dataset(train_ids)
    offset = 10_000  # SWA epochs draw other random streams than training epochs
    for epoch in range(start, cfg.swa_epochs + 1):
        loss = loop.train_epoch(wrapped, optimizer, dataset, offset + epoch, f"swa epoch {epoch}")
        averaged.update_parameters(model)
        scheduler.step()
        if loop.rank == 0:
            tracker.log_metrics({"swa_train_loss": loss}, step=epoch)
            save_checkpoint(last, {
                "model": model.state_dict(), "averaged": averaged.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "key": key,
            })  # fmt: skip
        _barrier(loop.world)
    metrics: dict[str, float] = {}
    if loop.rank == 0:
        swa_model = averaged.module
        if val_ids:
            swa_model.eval()
            with torch.inference_mode():
                metrics = task.validate(swa_model, val_ids, loop.device, loop.autocast)
            tracker.log_metrics(
                {f"swa_val_{k}": v for k, v in metrics.items()}, step=cfg.swa_epochs
            )
        save_checkpoint(
            out / "swa.pt",
            {
                "model": swa_model.state_dict(),
                "epoch": best["epoch"],
                "metrics": metrics,
                "task": task.state(),
            },
        )
    _barrier(loop.world)
    return metrics
