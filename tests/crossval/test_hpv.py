"""Fold ensemble and best-fold logic on hand-made logits."""

import numpy as np
import pandas as pd
import pytest

from hecktor.crossval.hpv import summarise


class _Task:
    def __init__(self, labels: dict[str, int]):
        self.table = pd.DataFrame(
            {"HPV Status": labels, "CenterID": {p: p.split("-")[0] for p in labels}}
        )

    def labels(self, patients):
        return self.table.loc[list(patients), "HPV Status"].to_numpy(dtype=np.float32)


def test_ensemble_averages_logits_and_best_fold_is_picked_by_cv():
    task = _Task({"A-1": 1, "A-2": 0, "B-1": 1, "B-2": 0, "T-1": 1, "T-2": 0})
    oof = pd.DataFrame(
        {
            "PatientID": ["A-1", "A-2", "B-1", "B-2"],
            "fold": ["fold-0", "fold-0", "fold-1", "fold-1"],
            "kind": "kfold",
            "logit": [2.0, -1.0, -1.0, 1.0],  # fold-0 right on both, fold-1 wrong on both
        }
    )
    test = pd.DataFrame(
        {
            "PatientID": ["T-1", "T-2", "T-1", "T-2"],
            "fold": ["fold-0", "fold-0", "fold-1", "fold-1"],
            "logit": [-0.5, -2.0, 3.0, 1.0],
        }
    )
    out = summarise(task, oof, test)
    assert out["folds"]["fold-0"]["balanced_accuracy"] == 1.0
    assert out["folds"]["fold-1"]["balanced_accuracy"] == 0.0
    assert out["cv"]["balanced_accuracy"] == 0.5
    # best fold (fold-0) alone: T-1 -0.5 -> 0 (wrong), T-2 -2.0 -> 0 (right)
    assert out["test_best_fold"]["fold"] == "fold-0"
    assert out["test_best_fold"]["balanced_accuracy"] == 0.5
    # ensemble: mean logits T-1 1.25 -> 1, T-2 -0.5 -> 0: both right
    assert out["test_ensemble"]["balanced_accuracy"] == 1.0
    assert out["test_ensemble"]["auc"] == 1.0


def test_per_centre_scores():
    task = _Task({"A-1": 1, "A-2": 0, "B-1": 1})
    oof = pd.DataFrame(
        {
            "PatientID": ["A-1", "A-2", "B-1"],
            "fold": "fold-0",
            "kind": "kfold",
            "logit": [1.0, 1.0, 1.0],
        }
    )
    out = summarise(task, oof, pd.DataFrame(columns=["PatientID", "fold", "logit"]))
    assert out["per_centre"]["A"]["balanced_accuracy"] == 0.5
    assert out["per_centre"]["B"]["balanced_accuracy"] == 1.0
    assert "test_ensemble" not in out
    assert out["cv"]["auc"] == pytest.approx(0.5)
