"""The challenge metrics as pure functions on arrays.

Choices the organisers left open, fixed here and tested:

* **GTVp DSC, empty cases.** A patient with no GTVp in truth and none predicted scores 1.0 (the
  model was right to predict nothing); truth empty but something predicted, or the reverse, scores 0.
  Every patient counts in the mean, so hallucinated primaries are penalised.
* **GTVn DSCagg** pools physical volumes (voxel count x voxel volume, mm^3) over patients, as the
  official ``DiceAggScore``; 1.0 when no patient has or is predicted any node.
* **Lesions** are 26-connected components of label 2 (voxels touching at a corner are one lesion).
* **Detection** matches predicted and true lesions one to one, greedily by decreasing IoU; a pair
  counts as a true positive when IoU > 0.3. An unmatched prediction is a false positive, an unmatched
  truth a false negative. A true lesion split into two predictions gives one TP and one FP.
  F1agg = 2TP / (2TP + FP + FN) pooled over patients; 1.0 when there are no lesions at all.
* **C-index** (Harrell): higher prediction = higher risk. A pair is comparable when the shorter time
  is an event; at tied times an event and a censored case are comparable (the censored one outlived
  the event), two events are not. Tied predictions count 0.5: lifelines' ``concordance_index``
  on ``-risk``; NaN when no pair is comparable.
* **Balanced accuracy** (scikit-learn's): mean recall over the classes present in the truth.
* **AUC** (scikit-learn's ``roc_auc_score``): NaN when one class is absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from lifelines.utils import concordance_index
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from hecktor.labels import GTVN, GTVP
from hecktor.lesions import components

IOU_THRESHOLD = 0.3


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """DSC of two boolean masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, truth).sum() / total)


def gtvp_dsc(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> tuple[float, list[float]]:
    """Mean GTVp DSC over patients, and the per-patient values."""
    values = [dice(p == GTVP, t == GTVP) for p, t in zip(preds, truths, strict=True)]
    return (float(np.mean(values)) if values else float("nan")), values


def gtvn_dsc_agg(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], voxel_volumes: Sequence[float]
) -> float:
    """Aggregated GTVn DSC: 2 sum|A n B| / sum(|A| + |B|), volumes in mm^3 per patient."""
    inter = total = 0.0
    for p, t, v in zip(preds, truths, voxel_volumes, strict=True):
        overlap, volumes = gtvn_volumes(p, t, v)
        inter += overlap
        total += volumes
    return 1.0 if total == 0 else 2.0 * inter / total


def gtvn_volumes(pred: np.ndarray, truth: np.ndarray, voxel_volume: float) -> tuple[float, float]:
    """One patient's share of GTVn DSCagg: |A n B| and |A| + |B| in mm^3."""
    a, b = pred == GTVN, truth == GTVN
    return float(np.logical_and(a, b).sum()) * voxel_volume, float(a.sum() + b.sum()) * voxel_volume


def match_lesions(
    pred: np.ndarray, truth: np.ndarray, iou_threshold: float = IOU_THRESHOLD
) -> tuple[int, int, int]:
    """(TP, FP, FN) of one patient's lesions, matched one to one by decreasing IoU > threshold."""
    p_lab, n_p = components(pred)
    t_lab, n_t = components(truth)
    if n_p == 0 or n_t == 0:
        return 0, n_p, n_t
    p_size = np.bincount(p_lab.ravel(), minlength=n_p + 1)
    t_size = np.bincount(t_lab.ravel(), minlength=n_t + 1)
    both = (p_lab > 0) & (t_lab > 0)
    pair = p_lab[both].astype(np.int64) * (n_t + 1) + t_lab[both]
    ids, inter = np.unique(pair, return_counts=True)
    pi, ti = ids // (n_t + 1), ids % (n_t + 1)
    iou = inter / (p_size[pi] + t_size[ti] - inter)
    used_p, used_t = set(), set()
    tp = 0
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] <= iou_threshold:
            break
        if pi[k] in used_p or ti[k] in used_t:
            continue
        used_p.add(pi[k])
        used_t.add(ti[k])
        tp += 1
    return tp, n_p - tp, n_t - tp


def gtvn_f1_agg(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> tuple[float, list[tuple[int, int, int]]]:
    """Aggregated GTVn detection F1 pooled over patients, and each patient's (TP, FP, FN)."""
    counts = [match_lesions(p == GTVN, t == GTVN) for p, t in zip(preds, truths, strict=True)]
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    denominator = 2 * tp + fp + fn
    return (1.0 if denominator == 0 else 2 * tp / denominator), counts


def scores_of_patients(rows: Sequence[dict]) -> dict[str, float]:
    """GTVp DSC, GTVn DSCagg and GTVn F1agg from the per-patient breakdown of
    :func:`segmentation_scores` (any subset or resample of its patients): what a bootstrap redraws."""
    p_values = [r["GTVp_DSC"] for r in rows]
    overlap = sum(r["GTVn_overlap_mm3"] for r in rows)
    volumes = sum(r["GTVn_volumes_mm3"] for r in rows)
    tp, fp, fn = (sum(r[f"GTVn_{k}"] for r in rows) for k in ("TP", "FP", "FN"))
    p_mean = float(np.mean(p_values)) if p_values else float("nan")
    n_dsc = 1.0 if volumes == 0 else 2.0 * overlap / volumes
    n_f1 = 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {"GTVp_DSC": p_mean, "GTVn_DSCagg": n_dsc, "GTVn_F1agg": n_f1,
            "score": selection_score(p_mean, n_dsc, n_f1)}  # fmt: skip


def selection_score(gtvp: float, gtvn_dsc: float, gtvn_f1: float) -> float:
    """The paper's model-selection score: mean of GTVp DSC, GTVn DSCagg and GTVn F1agg."""
    return float((gtvp + gtvn_dsc + gtvn_f1) / 3)


def segmentation_scores(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    voxel_volumes: Sequence[float],
    patients: Sequence[str] | None = None,
) -> dict:
    """All Task 1 metrics, with a per-patient breakdown."""
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} truths")
    for i, (p, t) in enumerate(zip(preds, truths, strict=True)):
        if p.shape != t.shape:
            who = patients[i] if patients else i
            raise ValueError(
                f"{who}: prediction shape {p.shape} differs from truth shape {t.shape}"
            )
    p_mean, p_values = gtvp_dsc(preds, truths)
    n_dsc = gtvn_dsc_agg(preds, truths, voxel_volumes)
    n_f1, counts = gtvn_f1_agg(preds, truths)
    names = list(patients) if patients is not None else [str(i) for i in range(len(preds))]
    per_patient = {
        name: {"GTVp_DSC": dp, "GTVn_TP": c[0], "GTVn_FP": c[1], "GTVn_FN": c[2],
               **dict(zip(("GTVn_overlap_mm3", "GTVn_volumes_mm3"), gtvn_volumes(p, t, v),
                          strict=True))}
        for name, dp, c, p, t, v in zip(names, p_values, counts, preds, truths, voxel_volumes,
                                        strict=True)
    }  # fmt: skip
    return {
        "GTVp_DSC": p_mean,
        "GTVn_DSCagg": n_dsc,
        "GTVn_F1agg": n_f1,
        "score": selection_score(p_mean, n_dsc, n_f1),
        "patients": per_patient,
    }


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index; higher ``risk`` = earlier event. NaN when no pair is comparable."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    if not (len(time) == len(event) == len(risk)):
        raise ValueError(f"lengths differ: time {len(time)}, event {len(event)}, risk {len(risk)}")
    if not np.all(np.isfinite(risk)):
        raise ValueError("risk contains NaN or infinite values")
    try:
        return float(concordance_index(time, -risk, event))
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset"
        return float("nan")


def balanced_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``truth``."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"shapes differ: truth {truth.shape}, prediction {pred.shape}")
    if truth.size == 0:
        return float("nan")
    with warnings.catch_warnings():  # one class, or a predicted class absent: as said above
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", "A single label was found")
        return float(balanced_accuracy_score(truth, pred))


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is absent."""
    truth, score = np.asarray(truth).astype(bool), np.asarray(score, dtype=float)
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, score))
