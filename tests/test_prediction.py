import numpy as np
import torch

from hecktor.labels import GTVN, GTVP
from hecktor.models.segmentation import build_segmenter, make_plan
from hecktor.prediction import (
    segment,
    segment_probabilities,
    survival_input,
)


def test_sliding_window_covers_a_volume_larger_than_the_patch():
    torch.manual_seed(0)
    model = build_segmenter(make_plan("dynunet", (16, 16, 16), (6.0, 6.0, 6.0), 4, 8)).eval()
    image = np.random.default_rng(0).normal(size=(2, 24, 20, 18)).astype(np.float32)
    probs = segment_probabilities(model, image, (16, 16, 16))
    assert probs.shape == (3, 24, 20, 18)
    torch.testing.assert_close(probs.sum(0), torch.ones(24, 20, 18))
    labels = segment(model, image, (16, 16, 16))
    assert labels.dtype == np.uint8 and labels.shape == (24, 20, 18)


def test_survival_input_on_a_coarser_grid_keeps_small_lesions_as_fractions():
    image = np.arange(2 * 4 * 4 * 5, dtype=np.float32).reshape(2, 4, 4, 5)
    mask = np.zeros((4, 4, 5), np.uint8)
    mask[0, 0, 0] = GTVP  # one voxel of a 2^3 block
    mask[2:4, 2:4, 2:4] = GTVN  # a whole block
    whole = survival_input(image, mask)
    assert whole.shape == (4, 4, 4, 5) and whole.dtype == np.float32
    coarse = survival_input(image, mask, pool=2)
    assert coarse.shape == (4, 2, 2, 2)  # the last, partial block of x is left out
    assert coarse[2, 0, 0, 0] == 1 / 8 and coarse[3, 1, 1, 1] == 1.0 and coarse[3].sum() == 1.0
    np.testing.assert_allclose(coarse[0, 0, 0, 0], image[0, :2, :2, :2].mean())
