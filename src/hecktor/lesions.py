"""Lesions as 26-connected components (voxels touching at a corner are one lesion), the official
definition: finding them, removing the small ones (the paper's post-processing), a mask in numbers,
and the box around them (Task 2's region). Pure functions on label arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from hecktor.labels import GTVN, GTVP

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a boolean mask: (labels, count)."""
    return ndimage.label(np.asarray(mask, bool), structure=_STRUCTURE_26)


def remove_small_lesions(labels: np.ndarray, min_mm3: float, voxel_mm3: float) -> np.ndarray:
    """Drop 26-connected components of GTVp and GTVn smaller than ``min_mm3`` (the paper: 100)."""
    out = labels.copy()
    if min_mm3 <= 0:
        return out
    for value in (GTVP, GTVN):
        comps, count = components(labels == value)
        if count == 0:
            continue
        sizes = np.bincount(comps.ravel())
        small = np.nonzero(sizes * voxel_mm3 < min_mm3)[0]
        small = small[small > 0]
        out[np.isin(comps, small)] = 0
    return out


def lesion_summary(labels: np.ndarray, voxel_mm3: float) -> dict[str, float | int]:
    """A mask in numbers: GTVp and GTVn volumes (ml) and the number of nodes (26-connected
    components of GTVn), for a reader who gets numbers rather than the mask."""
    _, nodes = components(labels == GTVN)
    return {
        "GTVp_ml": float((labels == GTVP).sum() * voxel_mm3 / 1000),
        "GTVn_ml": float((labels == GTVN).sum() * voxel_mm3 / 1000),
        "GTVn_lesions": int(nodes),
    }


def lesion_box(mask: np.ndarray, size: Sequence[int]) -> tuple[slice, slice, slice]:
    """A box of ``size`` voxels around the lesions (centred on the GTVp and GTVn voxels' centre of
    mass; on the volume's centre without any), shifted inside the volume and smaller where the
    volume is: Task 2's region, for a new patient the predicted lesions'."""
    mask = np.asarray(mask)
    where = np.argwhere(mask > 0)
    centre = where.mean(axis=0) if len(where) else (np.array(mask.shape) - 1) / 2
    starts = [min(max(math.floor(c - r / 2 + 0.5), 0), max(s - r, 0))
              for c, r, s in zip(centre, size, mask.shape, strict=True)]  # fmt: skip
    return tuple(slice(a, min(a + r, s)) for a, r, s in zip(starts, size, mask.shape, strict=True))  # type: ignore[return-value]
