import numpy as np
import pytest
import torch

from stage1_mask.postprocess import labels_from_probs, remove_islands


def test_islands_take_the_surrounding_class_and_largest_components_stay() -> None:
    lab = np.zeros((12, 12, 12), dtype=np.uint8)
    lab[2:9, 2:9, 2:9] = 1            # an organ
    lab[9:12, 0:3, 9:12] = 2          # class 2's main component (27 voxels)
    lab[5, 5, 5] = 2                  # and a speckle of class 2 inside the organ
    lab[10, 10, 10] = 1               # a stray organ voxel in the background
    lab[0:2, 10:12, 0:2] = 3          # a small (8-voxel) but only component of class 3: kept
    out = remove_islands(lab, min_voxels=4)
    assert out[5, 5, 5] == 1 and out[10, 10, 10] == 0
    assert (out == 3).sum() == 8
    assert (out == 1).sum() == 7**3 and (out == 2).sum() == 27
    assert lab[5, 5, 5] == 2  # the input is not modified


def test_nothing_to_do_and_bad_shape() -> None:
    lab = np.zeros((6, 6, 6), dtype=np.int64)
    lab[1:4, 1:4, 1:4] = 2
    np.testing.assert_array_equal(remove_islands(lab), lab)
    with pytest.raises(ValueError, match="X, Y, Z"):
        remove_islands(lab[0])


def test_labels_from_probs_argmax_then_clean() -> None:
    lab = np.zeros((2, 8, 8, 8), dtype=np.int64)
    lab[:, 1:7, 1:7, 1:7] = 1
    lab[0, 3, 3, 3] = 2  # a one-voxel island of class 2 (its only component: kept)
    lab[1, 3, 3, 3] = 2
    lab[1, 0:2, 0:2, 6:8] = 2  # class 2's larger component elsewhere: the island goes
    probs = torch.nn.functional.one_hot(torch.from_numpy(lab), 3).movedim(-1, 1).float()
    out = labels_from_probs(probs, min_voxels=4)
    assert out.shape == (2, 8, 8, 8) and out.dtype == np.uint8
    assert out[0, 3, 3, 3] == 2 and out[1, 3, 3, 3] == 1
    np.testing.assert_array_equal(labels_from_probs(probs, 0), lab.astype(np.uint8))
    with pytest.raises(ValueError, match="B, K"):
        labels_from_probs(probs[0])
