import numpy as np
import torch

from hecktor.models.segmentation import build_segmenter, make_plan
from hecktor.prediction import remove_small_lesions, segment, segment_probabilities


def test_remove_small_lesions_per_class_and_volume():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:3, 0:3, 0:3] = 1  # 27 voxels
    labels[8, 8, 8] = 1  # 1 voxel
    labels[5:7, 5:7, 5] = 2  # 4 voxels
    out = remove_small_lesions(labels, min_mm3=8.0, voxel_mm3=2.0)  # keep >= 4 voxels
    assert (out == 1).sum() == 27 and out[8, 8, 8] == 0
    assert (out == 2).sum() == 4
    assert remove_small_lesions(labels, 0, 1.0).tolist() == labels.tolist()
    assert (remove_small_lesions(labels, 10.0, 2.0) == 2).sum() == 0


def test_sliding_window_covers_a_volume_larger_than_the_patch():
    torch.manual_seed(0)
    model = build_segmenter(make_plan("dynunet", (16, 16, 16), (6.0, 6.0, 6.0), 4, 8)).eval()
    image = np.random.default_rng(0).normal(size=(2, 24, 20, 18)).astype(np.float32)
    probs = segment_probabilities(model, image, (16, 16, 16))
    assert probs.shape == (3, 24, 20, 18)
    torch.testing.assert_close(probs.sum(0), torch.ones(24, 20, 18))
    labels = segment(model, image, (16, 16, 16))
    assert labels.dtype == np.uint8 and labels.shape == (24, 20, 18)
