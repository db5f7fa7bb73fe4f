import numpy as np

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
