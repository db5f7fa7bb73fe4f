"""Challenge metrics on hand-worked cases; the C-index against lifelines."""

import numpy as np
import pytest
from lifelines.utils import concordance_index

from hecktor import metrics


def _vol(shape=(4, 6, 6)):
    return np.zeros(shape, np.uint8)


def test_dice_hand_worked():
    a, b = _vol(), _vol()
    a[0, :2, :2] = 1  # 4 voxels
    b[0, :2, :1] = 1  # 2 voxels, both inside a
    assert metrics.dice(a == 1, b == 1) == pytest.approx(2 * 2 / 6)


def test_gtvp_empty_policy():
    empty = _vol()
    hallucinated = _vol()
    hallucinated[1, 1, 1] = 1
    mean, values = metrics.gtvp_dsc([empty, hallucinated, empty], [empty, empty, hallucinated])
    assert values == [1.0, 0.0, 0.0]  # empty/empty = 1; one side empty = 0
    assert mean == pytest.approx(1 / 3)


def test_gtvn_dsc_agg_pools_physical_volume():
    p1, t1, p2, t2 = _vol(), _vol(), _vol(), _vol()
    t1[0, 0, :4] = 2  # 4 voxels
    p1[0, 0, :2] = 2  # 2 voxels, overlap 2
    t2[0, 0, :2] = 2  # 2 voxels
    # patient 2 predicts nothing
    # voxel volumes 1 and 8 mm^3: 2*(2*1 + 0*8) / ((2+4)*1 + (0+2)*8) = 4 / 22
    assert metrics.gtvn_dsc_agg([p1, p2], [t1, t2], [1.0, 8.0]) == pytest.approx(4 / 22)


def test_gtvn_dsc_agg_absent_everywhere_is_one():
    assert metrics.gtvn_dsc_agg([_vol()], [_vol()], [1.0]) == 1.0


def test_detection_hand_worked():
    truth = np.zeros((1, 4, 20), bool)
    pred = np.zeros_like(truth)
    truth[0, 0:2, 0:4] = True  # lesion A: 8 voxels
    pred[0, 0:2, 0:3] = True  # IoU 6/8 -> TP
    truth[0, 0:2, 8:10] = True  # lesion B: 4 voxels
    pred[0, 0:1, 8:9] = True  # IoU 1/4 = 0.25 -> no match: FP and FN
    pred[0, 3, 15:17] = True  # FP
    assert metrics.match_lesions(pred, truth) == (1, 2, 1)


def test_split_lesion_is_one_tp_one_fp():
    truth = np.zeros((1, 1, 10), bool)
    truth[0, 0, 0:10] = True
    pred = np.zeros_like(truth)
    pred[0, 0, 0:4] = True  # IoU 0.4
    pred[0, 0, 6:10] = True  # IoU 0.4, but the truth is taken
    assert metrics.match_lesions(pred, truth) == (1, 1, 0)


def test_iou_exactly_threshold_is_not_a_match():
    truth = np.zeros((1, 1, 10), bool)
    truth[0, 0, 0:10] = True
    pred = np.zeros_like(truth)
    pred[0, 0, 0:3] = True  # IoU 0.3, not > 0.3
    assert metrics.match_lesions(pred, truth) == (0, 1, 1)


def test_touching_nodes_are_one_lesion():
    truth = np.zeros((1, 2, 8), np.uint8)
    truth[0, 0, 0:4] = 2
    truth[0, 1, 4:8] = 2  # diagonal contact: one lesion
    pred = np.zeros_like(truth)
    pred[0, 0, 0:4] = 2  # IoU 4/8 = 0.5
    f1, counts = metrics.gtvn_f1_agg([pred], [truth])
    assert counts == [(1, 0, 0)] and f1 == 1.0


def test_f1_agg_pools_over_patients_and_handles_no_nodes():
    t1, p1 = _vol(), _vol()
    t1[0, 0, 0:2] = 2
    p1[0, 0, 0:2] = 2  # TP
    t2, p2 = _vol(), _vol()
    p2[3, 5, 5] = 2  # FP in a patient without nodes
    f1, _ = metrics.gtvn_f1_agg([p1, p2, _vol()], [t1, t2, _vol()])
    assert f1 == pytest.approx(2 / 3)
    assert metrics.gtvn_f1_agg([_vol()], [_vol()])[0] == 1.0


def test_segmentation_scores_and_selection():
    truth, pred = _vol(), _vol()
    truth[0, 0, 0:2] = 1
    pred[0, 0, 0:2] = 1
    scores = metrics.segmentation_scores([pred], [truth], [1.0], ["P-1"])
    assert (
        scores["GTVp_DSC"] == 1.0 and scores["GTVn_DSCagg"] == 1.0 and scores["GTVn_F1agg"] == 1.0
    )
    assert scores["score"] == 1.0
    assert metrics.selection_score(0.7, 0.8, 0.6) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="P-1: prediction shape"):
        metrics.segmentation_scores([pred[:, :3]], [truth], [1.0], ["P-1"])


def test_c_index_hand_worked():
    time = np.array([1.0, 2.0, 3.0])
    event = np.array([1, 1, 0])
    # comparable pairs: (0,1), (0,2), (1,2); risks order them 2 of 3 correctly
    assert metrics.c_index(time, event, np.array([3.0, 1.0, 2.0])) == pytest.approx(2 / 3)
    assert metrics.c_index(time, event, np.array([3.0, 2.0, 1.0])) == 1.0
    assert metrics.c_index(time, event, np.array([1.0, 1.0, 1.0])) == 0.5  # tied risks


@pytest.mark.parametrize("seed", range(5))
def test_c_index_matches_lifelines_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 60
    time = rng.integers(1, 15, n).astype(float)  # many tied times
    event = rng.random(n) < 0.7
    risk = rng.integers(0, 6, n).astype(float)  # many tied risks
    ours = metrics.c_index(time, event, risk)
    theirs = concordance_index(time, -risk, event)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_c_index_edge_cases():
    assert np.isnan(metrics.c_index(np.array([1.0, 2.0]), np.array([0, 0]), np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match="NaN"):
        metrics.c_index(np.array([1.0, 2.0]), np.array([1, 1]), np.array([np.nan, 1.0]))


def test_balanced_accuracy():
    truth = np.array([1, 1, 1, 1, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 1])
    assert metrics.balanced_accuracy(truth, pred) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert metrics.balanced_accuracy(np.array([1, 1]), np.array([1, 0])) == 0.5  # one class present
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert metrics.balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    s = rng.integers(0, 5, 80).astype(float)
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(metrics.auc(np.ones(3), np.arange(3.0)))


def test_winner():
    assert metrics.winner(0.7, 0.6) == "network"
    assert metrics.winner(0.6, 0.7) == "baseline"
    assert metrics.winner(0.5, 0.5) == "tie"
    assert metrics.winner(float("nan"), 0.5) == "n/a"
