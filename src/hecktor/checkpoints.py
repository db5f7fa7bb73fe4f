"""Checkpoints: safe saving and loading, a fold's final weights, and a model rebuilt from them.

Shared by training and inference. Checkpoints hold only tensors and plain values and load with
``torch.load(weights_only=True)``: nothing untrusted is unpickled.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from hecktor import io
from hecktor.errors import UserError
from hecktor.fingerprints import file_sha256


class Buildable(Protocol):
    """What rebuilding a model needs of a task: its network, once its fitted state is restored."""

    def build_model(self) -> nn.Module: ...


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save`` of tensors and plain values only, published once the archive checks
    whole (a full disk leaves a short one).

    Saved through a file handle: given a path, torch names the archive's inner folder after the
    (random) temporary file, and equal weights would not give equal bytes for DVC to recognise.
    """
    with io.atomic_path(path, io.check_zip) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects; one that cannot be read (truncated,
    damaged, not a checkpoint) is a :class:`UserError` naming the file."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: weights file missing") from None
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable weights file, truncated or damaged ({reason[:200]})") from None  # fmt: skip
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a hecktor weights file (a {type(state).__name__})")
    return state


FINAL = "final.json"  # written when a fold finishes: which file holds its final weights
_FOLD_FILES = ("last.pt", "best.pt", "swa_last.pt", "swa.pt", FINAL)


def write_final(folder: Path | str, key: str, swa_ran: bool) -> Path:
    """Record a finished fold's final weights: after SWA when it ran, else the best epoch's.

    The one rule for a fold's final weights; everything else reads it with
    :func:`trained_checkpoint`.
    """
    folder = Path(folder)
    weights = "swa.pt" if swa_ran else "best.pt"
    if load_checkpoint(folder / weights).get("key") != key:
        raise RuntimeError(f"{folder / weights}: written under another configuration")
    io.write_json(folder / FINAL, {"weights": weights, "key": key,
                                   "sha256": file_sha256(folder / weights)})  # fmt: skip
    return folder / weights


def trained_checkpoint(folder: Path | str) -> Path:
    """A finished fold's final weights, as :func:`write_final` recorded them: the file must hold
    the bytes it held when training ended (a damaged or replaced file is refused, named)."""
    folder = Path(folder)
    try:
        final = json.loads((folder / FINAL).read_text())
    except (OSError, ValueError):
        final = None
    if not final or not (folder / final["weights"]).is_file():
        # a ValueError: the command line reports it as one line, like any other unusable input
        raise UserError(f"{folder}: no finished training; run `hecktor train` first")
    weights = folder / final["weights"]
    if "sha256" not in final:
        raise UserError(f"{folder / FINAL}: written by an earlier version of hecktor (no digest "
                        "of its weights); train the fold again (`dvc repro` does)")  # fmt: skip
    if final["sha256"] != file_sha256(weights):
        raise UserError(
            f"{weights}: its bytes differ from those its training ended with (sha256 in "
            f"{folder / FINAL}): the file was damaged or replaced; train the fold again"
        )
    return weights


def clear_fold(folder: Path | str) -> None:
    """Remove a fold's checkpoints and final record: a training under a new key starts clean, so
    no weights of another configuration can be taken for its own."""
    for name in _FOLD_FILES:
        (Path(folder) / name).unlink(missing_ok=True)


def model_from(task: Buildable, state: dict[str, Any], device: torch.device) -> nn.Module:
    """The checkpoint's network in eval mode, after restoring the task's fitted state.

    The task state (e.g. a clinical encoder fitted on the fold's training patients) comes first:
    it decides the network's input width.
    """
    if state.get("task") and hasattr(task, "load_state"):
        task.load_state(state["task"])
    return restored(task.build_model(), state, device)


def restored(network: nn.Module, state: dict[str, Any], device: torch.device) -> nn.Module:
    """``network`` with the checkpoint's weights, on ``device``, in eval mode."""
    network.load_state_dict(state["model"])
    return network.to(device).eval()


def load_trained(
    task: Buildable, folder: Path | str, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """A fold's trained model in eval mode, with its checkpoint."""
    state = load_checkpoint(trained_checkpoint(folder), device)
    return model_from(task, state, device), state


def fold_score(fold: dict) -> float:
    """A trained fold's validation score (its ``summary.json`` entry): after SWA when there was
    SWA, else the best epoch's, as :func:`write_final` chooses the weights."""
    return io.figure((fold["swa"] or fold["best"] or {}).get("score"))


def best_fold(task_root: Path | str) -> Path | None:
    """The final weights of a task's best-scoring fold (e.g. the Task 1 weights Task 3 starts
    from); None before the task has trained."""
    summary_path = Path(task_root) / "summary.json"
    if not summary_path.is_file():
        return None
    folds = json.loads(summary_path.read_text())["folds"]
    name = max(folds, key=lambda f: np.nan_to_num(fold_score(folds[f]), nan=-1.0))
    return trained_checkpoint(Path(task_root) / name)


def kfold_checkpoints(
    task_root: Path | str, folds: list[tuple[str, str, list[str], list[str]]], prefix: str = ""
) -> dict[str, Path]:
    """The final weights of each k-fold model among ``folds`` (what a fold ensemble is made of)."""
    files = {
        name: trained_checkpoint(Path(task_root) / f"{prefix}{name}")
        for name, kind, _, _ in folds
        if kind == "kfold"
    }
    if not files:
        raise UserError(f"{task_root}: no k-fold models to bundle")
    return files
