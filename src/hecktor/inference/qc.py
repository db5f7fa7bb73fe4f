"""``predict --qc``: a picture of each patient's prediction, to check it by eye (drawing needs
matplotlib, which the rest of inference does not)."""

from __future__ import annotations

from pathlib import Path

from hecktor.figures import qc_figure, save_figure
from hecktor.inference.batch import Prediction


def notes_of(row: dict[str, object]) -> str:
    """The other tasks' predictions, in words."""
    parts = []
    if "HPV_probability" in row:
        status = "positive" if row.get("HPV_status") else "negative"
        parts.append(f"HPV {status} (probability {float(row['HPV_probability']):.2f})")  # type: ignore[arg-type]
    if "RFS_risk" in row:
        parts.append(f"RFS risk {float(row['RFS_risk']):+.2f} (standardised)")  # type: ignore[arg-type]
    return "; ".join(parts) or "segmentation only"


def write_qc(prediction: Prediction, path: Path) -> None:
    """Draw and write one patient's picture (PNG)."""
    meta = prediction.prepared.meta
    figure = qc_figure(str(prediction.row["PatientID"]), prediction.prepared.image,
                       (meta["pet_mean"], meta["pet_std"]), prediction.labels,
                       notes_of(prediction.row))  # fmt: skip
    save_figure(figure, path)
