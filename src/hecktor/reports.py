"""Figures and tables for MLflow, DVC plots and the Markdown reports."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

_LABEL_COLOURS = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.85), (1.0, 0.85, 0.0, 0.85)])


def _mip(labels: np.ndarray, axis: int) -> np.ndarray:
    """Label MIP that shows GTVp over GTVn where both project onto one pixel."""
    gtvn = (labels == 2).any(axis=axis) * 2
    gtvp = (labels == 1).any(axis=axis)
    return np.where(gtvp, 1, gtvn)


def mip_figure(cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]):
    """The paper's Fig. 1: coronal MIPs of PET (z-scored), prediction and truth, one row per case.

    Each case is (patient, pet (Z, Y, X), prediction, truth). GTVp green, GTVn yellow.
    """
    rows = max(len(cases), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, (patient, pet, pred, truth) in enumerate(cases):
        pet_mip = pet.max(axis=1)
        for col, (title, labels) in enumerate(
            (("PET", None), ("prediction", pred), ("truth", truth))
        ):
            ax = axes[row, col]
            ax.imshow(pet_mip, cmap="gray_r", origin="lower", vmin=-0.5, vmax=6.5)
            if labels is not None:
                ax.imshow(
                    _mip(labels, 1),
                    cmap=_LABEL_COLOURS,
                    origin="lower",
                    vmin=0,
                    vmax=2,
                    interpolation="nearest",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{patient}: {title}" if col == 0 else title, fontsize=8)
    fig.tight_layout()
    return fig


def markdown_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 3) -> str:
    """A Markdown table; floats rounded to ``digits``."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "n/a" if value != value else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
