"""Simple, honest baselines each model is compared with on the same patients, and the linear
models the additive fusion networks start from.

Task 1: PET thresholding, the classic fixed-SUV rule: voxels with SUV >= 2.5, 26-connected components; a component touching the top of the box is the brain and is
dropped; components under the minimum lesion volume are dropped; the component with the highest
SUVmax is the primary tumour, every other one a lymph node.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from scipy import ndimage
from sklearn.linear_model import LogisticRegression

from hecktor.labels import GTVN, GTVP
from hecktor.lesions import components

log = logging.getLogger(__name__)


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


def logistic_weights(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients and intercept of a logistic regression with balanced class weights (the Task 3
    baseline's form) on (patients, features) ``x``; zeros where ``y`` holds one class only."""
    if len(set(np.asarray(y).astype(int).tolist())) < 2:
        return np.zeros(x.shape[1]), 0.0
    model = LogisticRegression(class_weight="balanced", max_iter=2000).fit(
        x, np.asarray(y).astype(int)
    )
    return model.coef_[0].astype(float), float(model.intercept_[0])


def cox_weights(
    x: np.ndarray, time: np.ndarray, event: np.ndarray, penalizer: float = 0.1
) -> np.ndarray:
    """Coefficients of a ridge-penalised Cox model (the Task 2 baselines' form) on (patients,
    features) ``x``; zeros where it cannot be fitted (no event, or no convergence)."""
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["time"], frame["event"] = time, event
    if not np.asarray(event).any():
        return np.zeros(x.shape[1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = CoxPHFitter(penalizer=penalizer).fit(frame, "time", "event")
    except Exception as error:  # lifelines raises several kinds on degenerate data
        log.warning("Cox model not fitted (%s): the network starts from zero", error)
        return np.zeros(x.shape[1])
    return fitted.params_.to_numpy(float)
