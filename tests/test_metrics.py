"""Challenge metrics on hand-worked cases; the C-index against lifelines."""

import warnings

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


# --------------------------------------------------------------------------- found by mutation


def test_dice_takes_any_non_zero_voxel_as_foreground():
    assert metrics.dice(np.array([2, 0]), np.array([1, 0])) == 1.0


@pytest.mark.parametrize("score", [metrics.gtvp_dsc, metrics.gtvn_f1_agg])
def test_a_prediction_without_its_truth_is_an_error(score):
    with pytest.raises(ValueError):
        score([_vol(), _vol()], [_vol()])
    with pytest.raises(ValueError):
        metrics.gtvn_dsc_agg([_vol(), _vol()], [_vol(), _vol()], [1.0])


def test_segmentation_scores_per_patient_on_unequal_voxels():
    """Two patients, voxels of 1 and 2 mm^3, every count different, worked out by hand."""
    p1, t1, p2, t2 = _vol(), _vol(), _vol(), _vol()
    p1[0, 0, 0:2] = 1  # GTVp: 2 predicted, 1 true, 1 shared -> DSC 2/3
    t1[0, 0, 0] = 1
    p1[2, 0, 0:3] = 2  # one node, IoU 3/4 with the true one: TP
    t1[2, 0, 0:4] = 2
    p1[3, 5, 5] = 2  # a node with no truth: FP
    t2[3, 0, 0:2] = 2  # patient 2: one missed node (FN), no GTVp anywhere (DSC 1)
    scores = metrics.segmentation_scores([p1, p2], [t1, t2], [1.0, 2.0], ["a", "b"])
    assert scores["patients"] == {
        "a": {"GTVp_DSC": pytest.approx(2 / 3), "GTVn_TP": 1, "GTVn_FP": 1, "GTVn_FN": 0,
              "GTVn_overlap_mm3": 3.0, "GTVn_volumes_mm3": 8.0},
        "b": {"GTVp_DSC": 1.0, "GTVn_TP": 0, "GTVn_FP": 0, "GTVn_FN": 1,
              "GTVn_overlap_mm3": 0.0, "GTVn_volumes_mm3": 4.0},
    }  # fmt: skip
    # the per-patient breakdown gives the same figures back, for any subset or resample
    figures = {k: scores[k] for k in ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score")}
    assert metrics.scores_of_patients(list(scores["patients"].values())) == pytest.approx(figures)
    twice = metrics.scores_of_patients([scores["patients"]["b"]] * 2)
    assert twice["GTVn_F1agg"] == 0.0 and twice["GTVp_DSC"] == 1.0
    assert scores["GTVp_DSC"] == pytest.approx((2 / 3 + 1) / 2)
    # nodes pooled in mm^3: a predicts 4 and has 4 (3 shared, 1 mm^3); b has 2 (2 mm^3)
    assert scores["GTVn_DSCagg"] == pytest.approx(2 * 3 / ((4 + 4) * 1.0 + (0 + 2) * 2.0))
    assert scores["GTVn_F1agg"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    unnamed = metrics.segmentation_scores([p1, p2], [t1, t2], [1.0, 2.0])
    assert list(unnamed["patients"]) == ["0", "1"]
    with pytest.raises(ValueError, match="2 predictions for 1 truths"):
        metrics.segmentation_scores([p1, p2], [t1], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^1: prediction shape"):
        metrics.segmentation_scores([p1, p2[:, :3]], [t1, t2], [1.0, 2.0])


def test_an_empty_side_matches_nothing_and_counts_each_lesion():
    pred, truth = _vol(), _vol()
    pred[0, 0, 0] = pred[0, 3, 3] = True
    assert metrics.match_lesions(pred, truth) == (0, 2, 0)
    assert metrics.match_lesions(truth, pred) == (0, 0, 2)


def test_greedy_matching_takes_the_best_pair_first_and_never_reuses_a_lesion():
    """Row 0: one prediction over two true lesions (IoU 0.5 and 0.4): one TP, one FN. Row 3: two
    predictions on one true lesion (IoU 0.5 and 0.4): one TP, one FP. Row 6: a pair at IoU 0.35,
    below the skipped ones, still counts. TP 3, FP 1, FN 1."""
    pred, truth = _vol((1, 7, 30)), _vol((1, 7, 30))
    truth[0, 0, 0:5], truth[0, 0, 6:10], pred[0, 0, 0:10] = True, True, True
    truth[0, 3, 0:10], pred[0, 3, 0:5], pred[0, 3, 6:10] = True, True, True
    truth[0, 6, 0:20], pred[0, 6, 0:7] = True, True
    assert metrics.match_lesions(pred, truth) == (3, 1, 1)


def test_the_background_is_never_a_lesion():
    pred, truth = _vol((1, 1, 4)), _vol((1, 1, 4))
    pred[0, 0, 0:3], truth[0, 0, 3] = True, True
    assert metrics.match_lesions(pred, truth) == (0, 1, 1)


def test_balanced_accuracy_and_auc_guard_their_inputs_and_stay_quiet():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.balanced_accuracy(np.array([0, 1]), np.array([0]))
    assert np.isnan(metrics.balanced_accuracy(np.array([]), np.array([])))
    assert metrics.balanced_accuracy(np.array([1]), np.array([1])) == 1.0  # one patient
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one class, or a class predicted that is absent: no noise
        assert metrics.balanced_accuracy(np.array([1, 1]), np.array([1, 0])) == 0.5
        assert metrics.balanced_accuracy(np.array([1, 1]), np.array([1, 1])) == 1.0
    assert np.isnan(metrics.auc(np.zeros(3), np.arange(3.0)))
    assert metrics.auc(np.array([0, 1]), np.array([0.2, 0.1])) == 0.0


def test_c_index_names_unequal_lengths():
    with pytest.raises(ValueError, match="lengths differ: time 2, event 2, risk 1"):
        metrics.c_index(np.array([1.0, 2.0]), np.array([1, 1]), np.array([1.0]))


def test_dice_reads_either_side_as_a_mask():
    assert metrics.dice(np.array([1, 0]), np.array([2, 0])) == 1.0


def test_no_patients_scores_undefined_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, values = metrics.gtvp_dsc([], [])
    assert np.isnan(mean) and values == []


def test_aggregates_weigh_each_patient_by_its_voxel_volume_and_count_every_node():
    p1, t1, p2, t2 = _vol(), _vol(), _vol(), _vol()
    p1[0, 0, 0:2], t1[0, 0, 0:2] = 2, 2  # 2 voxels shared, 1 mm^3
    p2[0, 0, 0:2], t2[0, 0, 1:3] = 2, 2  # 1 shared of 2 and 2 (IoU 1/3), 8 mm^3
    assert metrics.gtvn_dsc_agg([p1, p2], [t1, t2], [1.0, 8.0]) == pytest.approx(
        2 * (2 * 1 + 1 * 8) / ((2 + 2) * 1 + (2 + 2) * 8))  # fmt: skip
    f1, counts = metrics.gtvn_f1_agg([p1, p2], [t1, t2])
    assert counts == [(1, 0, 0), (1, 0, 0)] and f1 == 1.0  # 2 TP: 2*2 / (2*2)
    alone = metrics.segmentation_scores([p1], [t1], [1.0], ["a"])["patients"]["a"]
    assert (alone["GTVn_TP"], alone["GTVn_FP"], alone["GTVn_FN"]) == (1, 0, 0)
    p2[2, 5, 5] = 2  # one false positive more
    scores = metrics.segmentation_scores([p1, p2], [t1, t2], [1.0, 8.0], ["a", "b"])
    assert scores["patients"]["b"] == {
        "GTVp_DSC": 1.0,
        "GTVn_TP": 1,
        "GTVn_FP": 1,
        "GTVn_FN": 0,
        "GTVn_overlap_mm3": 8.0,
        "GTVn_volumes_mm3": 40.0,
    }
    assert scores["GTVn_F1agg"] == pytest.approx(2 * 2 / (2 * 2 + 1))


def test_matching_on_a_row_of_many_small_lesions():
    """Eight predicted and five true lesions on one row, matched by hand (runs of voxels)."""
    pred, truth = np.zeros((1, 1, 24), bool), np.zeros((1, 1, 24), bool)
    pred[0, 0, [0, 2, 4, 6, 7, 8, 10, 13, 15, 16, 17, 21, 22]] = True
    truth[0, 0, [2, 4, 5, 13, 14, 17, 18, 22]] = True
    # true lesions {2}, {4,5}, {13,14}, {17,18}, {22}; matched: {2}, {4} (IoU 1/2), {13} (1/2),
    # {15,16,17} with {17,18} (1/4: no), {21,22} with {22} (1/2): TP 4, FP 4, FN 1
    assert metrics.match_lesions(pred, truth) == (4, 4, 1)


def test_undefined_scores_are_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.auc(np.ones(3), np.arange(3.0)))
        assert np.isnan(metrics.auc(np.zeros(3), np.arange(3.0)))
    with pytest.raises(ValueError, match=r"^risk contains NaN or infinite values$"):
        metrics.c_index(np.array([1.0, 2.0]), np.array([1, 1]), np.array([np.inf, 1.0]))
