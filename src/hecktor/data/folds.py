"""A task's folds, read from the splits file that :mod:`hecktor.data.splits` writes."""

from __future__ import annotations

import json
from pathlib import Path

from hecktor.errors import UserError


def load_splits(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def folds_of(
    splits: dict, key: str, split: str, only: tuple[int, ...] | None = None
) -> list[tuple[str, list[str], list[str]]]:
    """(name, train patients, validation patients) of each fold of ``split`` of the patients of
    ``key`` (``task1``, ``task2``, ``task3``)."""
    entry = splits[key]
    if split == "holdout":
        if "holdout" not in entry:
            raise UserError(f"{key}: the splits file has no hold-out")
        folds = [("holdout", entry["holdout"]["train"], entry["holdout"]["val"])]
    elif split == "kfold":
        folds = [(f"fold-{i}", f["train"], f["val"]) for i, f in enumerate(entry.get("kfold", []))]
    else:
        folds = [(f"loco-{f['centre'][0]}", f["train"], f["val"]) for f in entry.get("loco", [])]
    if only is not None:
        folds = [f for i, f in enumerate(folds) if i in only]
    if not folds:
        raise UserError(f"{key}: split {split!r} has no folds")
    return folds
