"""Simple, honest baselines each model is compared with on the same patients.

Task 1: PET thresholding, the classic fixed-SUV rule: voxels with SUV >= 2.5, 26-connected components; a component touching the top of the box is the brain and is
dropped; components under the minimum lesion volume are dropped; the component with the highest
SUVmax is the primary tumour, every other one a lymph node.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hecktor.labels import GTVN, GTVP
from hecktor.lesions import components


def pet_threshold(
    suv: np.ndarray, voxel_mm3: float, threshold: float = 2.5, min_mm3: float = 100.0
) -> np.ndarray:
    """Label map (Z, Y, X) from a PET in SUV on an identity-direction grid (z increasing upwards)."""
    comps, count = components(suv >= threshold)
    labels = np.zeros(suv.shape, dtype=np.uint8)
    if count == 0:
        return labels
    ids = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(suv), comps, ids)
    peaks = ndimage.maximum(suv, comps, ids)
    brain = set(np.unique(comps[-1])) - {0}
    keep = [
        i
        for i, size in zip(ids, sizes, strict=True)
        if size * voxel_mm3 >= min_mm3 and i not in brain
    ]
    if not keep:
        return labels
    primary = max(keep, key=lambda i: peaks[i - 1])
    labels[np.isin(comps, keep)] = GTVN
    labels[comps == primary] = GTVP
    return labels
