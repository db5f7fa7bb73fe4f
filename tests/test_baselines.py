import numpy as np

from hecktor import baselines
from hecktor.baselines import pet_threshold


def test_pet_threshold_rules():
    suv = np.full((20, 12, 12), 0.8, np.float32)
    suv[-3:, 2:10, 2:10] = 9.0  # brain: touches the top of the box
    suv[5:9, 2:6, 2:6] = 12.0  # hottest lesion: primary
    suv[5:8, 8:11, 8:11] = 4.0  # another lesion: node
    suv[15, 1, 1] = 5.0  # single voxel: too small
    labels = pet_threshold(suv, voxel_mm3=27.0, threshold=2.5, min_mm3=100.0)
    assert (labels[-3:] == 0).all()
    assert (labels[5:9, 2:6, 2:6] == 1).all() and (labels == 1).sum() == 64
    assert (labels[5:8, 8:11, 8:11] == 2).all() and (labels == 2).sum() == 27
    assert labels[15, 1, 1] == 0


def test_pet_threshold_nothing_above():
    assert pet_threshold(np.ones((4, 4, 4)), 1.0).sum() == 0


def test_the_linear_starting_points_are_the_baselines_fits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] - x[:, 1] + rng.normal(0, 0.5, 200) > 0).astype(int)
    weights, _ = baselines.logistic_weights(x, y)
    assert weights[0] > 1 and weights[1] < -1 and abs(weights[2]) < 0.5
    assert baselines.logistic_weights(x, np.ones(200))[0].tolist() == [0.0, 0.0, 0.0]
    time = rng.exponential(1 / np.exp(x[:, 0] - x[:, 1]))  # hazard rises with x0, falls with x1
    cox = baselines.cox_weights(x, time, np.ones(200))
    assert cox[0] > 0.5 and cox[1] < -0.5 and abs(cox[2]) < 0.3
    assert baselines.cox_weights(x, time, np.zeros(200)).tolist() == [0.0, 0.0, 0.0]
