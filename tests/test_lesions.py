"""Lesions: 26-connected components, small-lesion removal, a mask in numbers, the lesions' box."""

import numpy as np
from scipy import ndimage

from hecktor.labels import GTVN, GTVP
from hecktor.lesions import components, lesion_box, lesion_summary, remove_small_lesions


def test_lesions_are_26_connected():
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touch at a corner only
    assert components(mask)[1] == 1
    mask[2, 2, 2] = False
    far = np.zeros((3, 3, 5), bool)
    far[0, 0, 0] = far[0, 0, 4] = True
    assert components(far)[1] == 2


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


def test_lesions_touching_only_at_a_corner_are_one_lesion():
    """26-connectivity: two groups of 3 voxels meeting corner to corner make one 6-voxel lesion,
    kept at a 5-voxel threshold (6-connectivity would see two lesions of 3 and drop both)."""
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1, 1, 1:4] = 2
    labels[2, 2, 4:7] = 2  # touches (1, 1, 3) only diagonally
    kept = remove_small_lesions(labels, min_mm3=5.0, voxel_mm3=1.0)
    assert (kept == 2).sum() == 6
    assert ndimage.label(labels == 2, structure=np.ones((3, 3, 3)))[1] == 1
    assert ndimage.label(labels == 2)[1] == 2  # what 6-connectivity would see


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


def test_a_mask_in_numbers_counts_volumes_and_nodes():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = GTVP  # 8 voxels
    labels[4, 4, 4] = labels[5, 5, 5] = GTVN  # one node (corner contact)
    labels[0, 5, 0] = GTVN  # another
    assert lesion_summary(labels, voxel_mm3=500.0) == {
        "GTVp_ml": 4.0, "GTVn_ml": 1.5, "GTVn_lesions": 2}  # fmt: skip


def test_lesions_below_a_cubic_millimetre_and_nodes_without_a_primary_are_removed():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0, 0, 0] = GTVN  # 0.1 mm^3: below 0.5
    labels[3:5, 3:5, 3:5] = GTVN  # 0.8 mm^3: kept
    kept = remove_small_lesions(labels, min_mm3=0.5, voxel_mm3=0.1)  # and no GTVp at all
    assert kept[0, 0, 0] == 0 and (kept == GTVN).sum() == 8
    assert remove_small_lesions(labels, min_mm3=0, voxel_mm3=0.1).tolist() == labels.tolist()


def test_the_lesion_box_shifts_inside_the_volume_at_its_far_end():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[9, 9, 9] = GTVP
    assert [(s.start, s.stop) for s in lesion_box(mask, (4, 4, 4))] == [(6, 10)] * 3
    assert [(s.start, s.stop) for s in lesion_box(mask, (10, 12, 4))] == [(0, 10), (0, 10), (6, 10)]


def test_the_lesion_box_needs_a_size_per_axis():
    import pytest

    with pytest.raises(ValueError):
        lesion_box(np.zeros((4, 4, 4), np.uint8), (2, 2))
