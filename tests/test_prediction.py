import numpy as np
import torch

from hecktor.metrics import GTVN, GTVP
from hecktor.models.segmentation import build_segmenter, make_plan
from hecktor.prediction import (
    lesion_box,
    remove_small_lesions,
    segment,
    segment_probabilities,
    survival_input,
)


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


def test_the_lesion_box_is_centred_on_the_lesions_and_stays_inside_the_volume():
    mask = np.zeros((40, 30, 20), np.uint8)
    mask[10:13, 14:17, 9:12] = GTVP  # centre (11, 15, 10)
    box = lesion_box(mask, (10, 10, 10))
    assert [(s.start, s.stop) for s in box] == [(6, 16), (10, 20), (5, 15)]
    mask[:] = 0
    mask[38, 1, 19] = GTVN  # at a corner: shifted inside
    assert [(s.start, s.stop) for s in lesion_box(mask, (10, 10, 10))] == [
        (30, 40),
        (0, 10),
        (10, 20),
    ]
    empty = lesion_box(np.zeros((40, 30, 20), np.uint8), (10, 50, 10))  # no lesion: the centre
    assert [(s.start, s.stop) for s in empty] == [(15, 25), (0, 30), (5, 15)]


def test_lesions_touching_only_at_a_corner_are_one_lesion():
    """26-connectivity: two groups of 3 voxels meeting corner to corner make one 6-voxel lesion,
    kept at a 5-voxel threshold (6-connectivity would see two lesions of 3 and drop both)."""
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1, 1, 1:4] = 2
    labels[2, 2, 4:7] = 2  # touches (1, 1, 3) only diagonally
    kept = remove_small_lesions(labels, min_mm3=5.0, voxel_mm3=1.0)
    assert (kept == 2).sum() == 6
    from scipy import ndimage

    assert ndimage.label(labels == 2, structure=np.ones((3, 3, 3)))[1] == 1
    assert ndimage.label(labels == 2)[1] == 2  # what 6-connectivity would see
