"""Patient splits: stratified k-fold, leave-one-centre-out, and the paper's small Task 1 hold-out.

Tasks 2 and 3 also set a stratified test set aside (``split.test_fraction``) before their folds are
drawn: no fold model trains on it, so a fold ensemble and the best single fold can be compared on it,
as the paper compared them on the challenge's validation set.

Folds are stratified by centre and the task's label (Task 1: whether the patient has lymph nodes;
Task 2: relapse; Task 3: HPV status). A centre-label stratum too small for k folds falls back to the
label alone, so small centres still spread across folds. Leave-one-centre-out holds out each centre
in turn: the honest estimate of how a model does at a centre it has never seen.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from hecktor import io
from hecktor.config import SplitConfig
from hecktor.data import preprocess
from hecktor.errors import UserError

Fold = dict[str, list[str]]


def strata(centres: list[str], labels: list[object], folds: int) -> list[str]:
    """Centre-and-label strata; rare ones fall back to the label alone, then to one stratum."""
    keys = [f"{c}|{y}" for c, y in zip(centres, labels, strict=True)]
    counts = Counter(keys)
    keys = [k if counts[k] >= folds else f"*|{k.split('|', 1)[1]}" for k in keys]
    counts = Counter(keys)
    return [k if counts[k] >= folds else "*|*" for k in keys]


def kfold(
    patients: list[str], centres: list[str], labels: list[object], folds: int, seed: int
) -> list[Fold]:
    """Stratified k-fold; each patient is validated exactly once."""
    if len(patients) < folds:
        raise UserError(
            f"split.folds: {folds} folds need at least {folds} patients, got {len(patients)}"
        )
    keys = strata(centres, labels, folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    ids = np.array(patients)
    with warnings.catch_warnings():  # a label rarer than k is expected in small cohorts
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        pairs = list(splitter.split(ids, keys))
    return [
        {"train": sorted(ids[tr].tolist()), "val": sorted(ids[va].tolist())} for tr, va in pairs
    ]


def leave_one_centre_out(patients: list[str], centres: list[str]) -> list[Fold]:
    """One fold per centre, that centre's patients held out; empty when only one centre."""
    names = sorted(set(centres))
    if len(names) < 2:
        return []
    return [
        {
            "centre": [name],
            "train": sorted(p for p, c in zip(patients, centres, strict=True) if c != name),
            "val": sorted(p for p, c in zip(patients, centres, strict=True) if c == name),
        }
        for name in names
    ]


def holdout(
    patients: list[str], centres: list[str], labels: list[object], fraction: float, seed: int
) -> Fold:
    """One stratified train/validation split (the paper keeps 36 of 680 Task 1 patients)."""
    n_val = max(1, round(fraction * len(patients)))
    keys = strata(centres, labels, 2)
    stratify = keys if min(Counter(keys).values()) >= 2 and n_val >= len(set(keys)) else None
    train, val = train_test_split(patients, test_size=n_val, random_state=seed, stratify=stratify)
    return {"train": sorted(train), "val": sorted(val)}


def task_labels(prepared: Path | str) -> dict[int, pd.DataFrame]:
    """Per task: patients, centres and the stratification label, from a prepared dataset."""
    prepared = Path(prepared)
    cases = pd.read_csv(prepared / "cases.csv")
    clinical = pd.read_csv(prepared / "clinical.csv").set_index("PatientID")
    out = {}
    t1 = cases[cases["task1"] & cases["has_label"]].copy()
    t1["label"] = [
        int((preprocess.StoredCase(prepared / p).whole_label() == 2).any()) for p in t1["PatientID"]
    ]
    out[1] = t1
    for task, column in ((2, "Relapse"), (3, "HPV Status")):
        frame = cases[cases[f"task{task}"]].copy()
        if column in clinical:
            frame["label"] = [clinical[column].get(p) for p in frame["PatientID"]]
        else:
            frame["label"] = np.nan
        out[task] = frame[frame["label"].notna()]
    return out


def make_splits(prepared: Path | str, cfg: SplitConfig) -> dict:
    """All splits of all tasks, as written to the splits file."""
    result: dict = {"folds": cfg.folds, "seed": cfg.seed}
    for task, frame in task_labels(prepared).items():
        patients = frame["PatientID"].tolist()
        centres = frame["CenterID"].tolist()
        labels = [str(v) for v in frame["label"].tolist()]
        entry: dict = {"patients": len(patients)}
        if task == 1 and len(patients) >= 2:
            entry["holdout"] = holdout(patients, centres, labels, cfg.holdout_fraction, cfg.seed)
            # tuning validates inside the hold-out's training patients: the hold-out stays unseen
            inner = [i for i, p in enumerate(patients) if p in set(entry["holdout"]["train"])]
            if len(inner) >= 2:
                entry["tuning"] = holdout(
                    [patients[i] for i in inner], [centres[i] for i in inner],
                    [labels[i] for i in inner], cfg.holdout_fraction, cfg.seed,
                )  # fmt: skip
        if task in (2, 3) and cfg.test_fraction > 0 and len(patients) >= 2:
            # a test set no fold trains on: where fold ensembles and single folds are compared
            entry["test"] = holdout(patients, centres, labels, cfg.test_fraction, cfg.seed)["val"]
            keep = [i for i, p in enumerate(patients) if p not in set(entry["test"])]
            patients = [patients[i] for i in keep]
            centres = [centres[i] for i in keep]
            labels = [labels[i] for i in keep]
        if len(patients) >= cfg.folds:
            entry["kfold"] = kfold(patients, centres, labels, cfg.folds, cfg.seed)
        entry["loco"] = leave_one_centre_out(patients, centres)
        result[f"task{task}"] = entry
    return result


def write_splits(prepared: Path | str, out: Path | str, cfg: SplitConfig) -> dict:
    splits = make_splits(prepared, cfg)
    io.write_json(out, splits)
    return splits


def fold_predictions(
    folds: Sequence[tuple[str, str, list[str], list[str]]],
    test: Sequence[str],
    fit: Callable[[tuple[str, str, list[str], list[str]]], Callable[[list[str]], Sequence[float]]],
    column: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fold model's values on its validation patients (out of fold) and, for k-fold models,
    on the test patients: ``fit(fold)`` gives the fold's predictor (patients -> one value each).

    Returns ``PatientID, fold, kind, <column>`` (one row per validation patient) and
    ``PatientID, fold, <column>`` (one row per k-fold model and test patient).
    """
    oof, tested = [], []
    for fold in folds:
        name, kind, _, val_ids = fold
        predict = fit(fold)
        values = predict(list(val_ids))
        oof += [{"PatientID": p, "fold": name, "kind": kind, column: v}
                for p, v in zip(val_ids, values, strict=True)]  # fmt: skip
        if test and kind == "kfold":
            values = predict(list(test))
            tested += [{"PatientID": p, "fold": name, column: v}
                       for p, v in zip(test, values, strict=True)]  # fmt: skip
    return (
        pd.DataFrame(oof, columns=["PatientID", "fold", "kind", column]),
        pd.DataFrame(tested, columns=["PatientID", "fold", column]),
    )


def pooled_values(oof: pd.DataFrame, tested: pd.DataFrame, column: str) -> dict[str, pd.Series]:
    """One value per patient from :func:`fold_predictions`' frames: ``cv`` (each k-fold
    validation patient's out-of-fold value) and, with a test set, ``test_ensemble`` (the mean of
    the k-fold models' values on each test patient)."""
    kfold = oof[oof["kind"] == "kfold"]
    out = {"cv": kfold.set_index("PatientID")[column].sort_index()}
    if len(tested):
        out["test_ensemble"] = tested.groupby("PatientID")[column].mean().sort_index()
    return out
