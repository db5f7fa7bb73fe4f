"""Pictures of images and masks: the label colours and their key, maximum-intensity projections
(the paper's Fig. 1, ``predict --qc``'s picture of a patient), and how a figure is written.
Drawing only (matplotlib, numpy): no scoring, so ``predict --qc`` needs no more than this."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from hecktor import io
from hecktor.labels import BACKGROUND, GTVN, GTVP, LABELS, rgba

_LABEL_COLOURS = ListedColormap([rgba(v) for v in (BACKGROUND, GTVP, GTVN)])


def _label_legend(fig) -> None:
    """The label colours' key, under the panels."""
    handles = [Patch(color=rgba(value), label=name) for value, name, _ in LABELS]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)


def label_mip(labels: np.ndarray, axis: int = 1) -> np.ndarray:
    """Label MIP that shows GTVp over GTVn where both project onto one pixel."""
    gtvn = (labels == 2).any(axis=axis) * 2
    gtvp = (labels == 1).any(axis=axis)
    return np.where(gtvp, 1, gtvn)


def mip_figure(cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]):
    """The paper's Fig. 1: coronal MIPs of PET, prediction and truth, one row per case; the PET
    in the release's units (SUV where the release is in SUV) shown as the paper's: centre 3,
    window 7.

    Each case is (title, PET MIP, prediction label MIP, truth label MIP), the MIPs along y
    (:func:`label_mip` for the labels). GTVp green, GTVn yellow.
    """
    rows = max(len(cases), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows + 0.4), squeeze=False)
    for row, (title, pet_mip, pred, truth) in enumerate(cases):
        for col, (what, labels) in enumerate(
            (("PET", None), ("prediction", pred), ("truth", truth))
        ):
            ax = axes[row, col]
            ax.imshow(pet_mip, cmap="gray_r", origin="lower", vmin=-0.5, vmax=6.5)
            if labels is not None:
                ax.imshow(labels, cmap=_LABEL_COLOURS, origin="lower", vmin=0, vmax=2,
                          interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}: {what}" if col == 0 else what, fontsize=8)
    _label_legend(fig)
    fig.tight_layout(rect=(0, 0.4 / (2.6 * rows + 0.4), 1, 1))
    return fig


def qc_figure(title: str, image: np.ndarray, pet_scale: tuple[float, float],
              labels: np.ndarray | None, notes: str):  # fmt: skip
    """One patient at a glance: coronal MIPs of the CT and of the PET (restored to the release's
    units by ``pet_scale``, the z-score's mean and spread, shown as Fig. 1), with the outlines of
    the predicted GTVp (green) and GTVn (yellow) and ``notes`` (the other tasks' predictions)."""
    mean, std = pet_scale
    fig, axes = plt.subplots(1, 2, figsize=(7, 4.4))
    shown = ((axes[0], "CT", image[0].max(axis=1), "gray", None, None),
             (axes[1], "PET", (image[1] * std + mean).max(axis=1), "gray_r", -0.5, 6.5))  # fmt: skip
    for ax, name, mip, cmap, low, high in shown:
        ax.imshow(mip, cmap=cmap, origin="lower", vmin=low, vmax=high)
        if labels is not None:
            outline = label_mip(labels)
            for value in (1, 2):
                if (outline == value).any():
                    ax.contour(outline == value, levels=[0.5], colors=[_LABEL_COLOURS(value)],
                               linewidths=1.2, origin="lower")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _label_legend(fig)
    fig.suptitle(f"{title}\n{notes}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def save_figure(figure, path: Path | str) -> Path:
    """Write a figure as PNG atomically (a reader never sees half a file) and close it."""
    with io.atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)
    return Path(path)
