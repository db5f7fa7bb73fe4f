"""Score prediction files against the truth: the ``hecktor evaluate`` verbs.

File reading and pairing live here; the maths is in :mod:`hecktor.metrics`. Predictions whose
writer did not finish (a ``predict`` run that was killed or failed) are refused. A truth patient
without a prediction is an error naming them. Predictions of patients outside the truth are ignored
and named in a warning, for every task alike (a batch output covers patients outside one task's
truth, such as Task 1-only patients in a Task 2 table).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from hecktor import io, metrics
from hecktor.data import layout
from hecktor.data.layout import InputError, Problem

_NII = ".nii.gz"

log = logging.getLogger(__name__)


def _check_pairing(pred: set[str], truth: set[str], pred_src: Path, truth_src: Path) -> None:
    """Every truth patient must be predicted; predictions of other patients are ignored, by name."""
    extra = sorted(pred - truth)
    if extra:
        shown = ", ".join(extra[:20]) + (f" and {len(extra) - 20} more" if len(extra) > 20 else "")
        log.warning("%s: %d patient(s) not in %s ignored: %s", pred_src, len(extra), truth_src,
                    shown)  # fmt: skip
    problems = [
        Problem(p, truth_src, "in the truth but not predicted") for p in sorted(truth - pred)
    ]
    if problems:
        raise InputError(problems)


def truth_masks(truth: Path) -> dict[str, Path]:
    """Label files by patient: a flat folder of ``<PID>.nii.gz`` or a release's ``Task 1`` folder."""
    truth = Path(truth)
    if not truth.is_dir():
        raise InputError([Problem("-", truth, "truth folder not found")])
    flat = {p.name.removesuffix(_NII): p for p in truth.glob(f"*{_NII}")}
    nested = {
        d.name: d / f"{d.name}{_NII}" for d in truth.iterdir() if (d / f"{d.name}{_NII}").is_file()
    }
    return flat or nested


def _per_centre(patients: list[str], score, *columns: np.ndarray) -> dict[str, float]:
    centres = np.array([layout.centre_of(p) for p in patients])
    out = {}
    for centre in sorted(set(centres)):
        keep = centres == centre
        value = score(*(c[keep] for c in columns))
        out[centre] = None if np.isnan(value) else float(value)
    return out


def evaluate_segmentation(pred_dir: Path | str, truth_dir: Path | str) -> dict:
    """Task 1 metrics of ``<PID>.nii.gz`` predictions on the original CT grids."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    if not pred_dir.is_dir():
        raise InputError([Problem("-", pred_dir, "prediction folder not found")])
    io.check_complete(pred_dir)
    preds = {p.name.removesuffix(_NII): p for p in pred_dir.glob(f"*{_NII}")}
    truths = truth_masks(truth_dir)
    _check_pairing(set(preds), set(truths), pred_dir, truth_dir)
    if not truths:
        raise InputError([Problem("-", truth_dir, "no label files found")])
    problems: list[Problem] = []
    pred_arrays, truth_arrays, volumes, patients = [], [], [], []
    for patient in sorted(truths):
        t_img = layout.read_image(truths[patient], patient, problems, pixel=sitk.sitkUInt8)
        p_img = layout.read_image(preds[patient], patient, problems, pixel=None)
        if t_img is None or p_img is None:
            continue
        if not layout.same_grid(p_img, t_img):
            problems.append(
                Problem(patient, preds[patient], "prediction is not on the truth's (CT) grid")
            )
            continue
        p_arr = sitk.GetArrayFromImage(p_img)
        bad = sorted(set(np.unique(p_arr).tolist()) - set(layout.LABELS))
        if bad:
            problems.append(
                Problem(patient, preds[patient], f"label values {bad[:10]} outside {{0, 1, 2}}")
            )
            continue
        pred_arrays.append(p_arr.astype(np.uint8))
        truth_arrays.append(sitk.GetArrayFromImage(t_img))
        volumes.append(float(np.prod(t_img.GetSpacing())))
        patients.append(patient)
    if problems:
        raise InputError(problems)
    result = metrics.segmentation_scores(pred_arrays, truth_arrays, volumes, patients)
    centres = sorted({layout.centre_of(p) for p in patients})
    result["per_centre"] = {}
    for centre in centres:
        idx = [i for i, p in enumerate(patients) if layout.centre_of(p) == centre]
        sub = metrics.segmentation_scores(
            [pred_arrays[i] for i in idx], [truth_arrays[i] for i in idx], [volumes[i] for i in idx]
        )
        result["per_centre"][centre] = {
            k: sub[k] for k in ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score")
        }
    result["n_patients"] = len(patients)
    return result


def read_predictions(path: Path | str, column: str = "Prediction") -> pd.Series:
    """A ``PatientID,Prediction`` CSV as a float series indexed by patient.

    ``hecktor predict``'s ``predictions.csv`` is read too: its ``column`` (``RFS_risk``,
    ``HPV_status``) stands in for ``Prediction``.
    """
    path = Path(path)
    io.check_complete(path)
    try:
        frame = pd.read_csv(path, dtype={"PatientID": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError([Problem("-", path, f"cannot read CSV ({err})")]) from None
    if "Prediction" not in frame.columns and column in frame.columns:
        frame = frame.rename(columns={column: "Prediction"})
    missing = [c for c in ("PatientID", "Prediction") if c not in frame.columns]
    if missing:
        raise InputError([Problem("(all patients)", path, f"missing column(s) {missing}")])
    problems = []
    values = pd.to_numeric(frame["Prediction"], errors="coerce")
    for patient, raw, value in zip(frame["PatientID"], frame["Prediction"], values, strict=True):
        if not np.isfinite(value):
            problems.append(Problem(str(patient), path, f"unreadable prediction {raw!r}"))
    duplicated = frame["PatientID"][frame["PatientID"].duplicated()]
    problems += [Problem(p, path, "predicted more than once") for p in sorted(set(duplicated))]
    if problems:
        raise InputError(problems)
    return pd.Series(values.to_numpy(dtype=float), index=frame["PatientID"].astype(str))


def _truth_table(path: Path | str, task: int) -> pd.DataFrame:
    problems: list[Problem] = []
    table = layout.read_table(Path(path), task, problems)
    if problems:
        raise InputError(problems)
    return table.set_index("PatientID")


def evaluate_survival(pred_csv: Path | str, truth_csv: Path | str) -> dict:
    """Task 2: Harrell's C-index of predicted risks against a Task 2 table (RFS, Relapse)."""
    pred = read_predictions(pred_csv, "RFS_risk")
    truth = _truth_table(truth_csv, 2)
    _check_pairing(set(pred.index), set(truth.index), Path(pred_csv), Path(truth_csv))
    patients = sorted(truth.index)
    time = truth.loc[patients, "RFS"].to_numpy(float)
    event = truth.loc[patients, "Relapse"].to_numpy(float).astype(int)
    risk = pred.loc[patients].to_numpy(float)
    if not event.any():
        log.warning("%s: no relapse among %d patients: the C-index is undefined (null)",
                    truth_csv, len(patients))  # fmt: skip
    return {
        "c_index": metrics.c_index(time, event, risk),
        "n_patients": len(patients),
        "n_events": int(event.sum()),
        "per_centre": _per_centre(patients, metrics.c_index, time, event, risk),
    }


def evaluate_hpv(pred_csv: Path | str, truth_csv: Path | str) -> dict:
    """Task 3: balanced accuracy of 0/1 predictions against a Task 3 table (HPV Status)."""
    pred = read_predictions(pred_csv, "HPV_status")
    bad = [
        Problem(p, Path(pred_csv), f"prediction {v!r} is not 0 or 1")
        for p, v in pred.items()
        if v not in (0, 1)
    ]
    if bad:
        raise InputError(bad)
    truth = _truth_table(truth_csv, 3)
    _check_pairing(set(pred.index), set(truth.index), Path(pred_csv), Path(truth_csv))
    patients = sorted(truth.index)
    y = truth.loc[patients, "HPV Status"].to_numpy(float).astype(int)
    p = pred.loc[patients].to_numpy(float).astype(int)
    return {
        "balanced_accuracy": metrics.balanced_accuracy(y, p),
        "n_patients": len(patients),
        "n_positive": int(y.sum()),
        "per_centre": _per_centre(patients, metrics.balanced_accuracy, y, p),
    }
