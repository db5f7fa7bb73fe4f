import pytest
import torch

from hecktor.models.segmentation import build_dynunet, divisor, plan


def test_plan_isotropic():
    kernels, strides = plan((40, 40, 40), (3.0, 3.0, 3.0))
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[3, 3, 3]] * 4
    assert divisor(strides) == [8, 8, 8]


def test_plan_paper_patch_has_five_downsamplings():
    _, strides = plan((192, 192, 192), (1.0, 1.0, 1.0))
    assert len(strides) == 6 and divisor(strides) == [32, 32, 32]


def test_plan_anisotropic_spacing_skips_the_coarse_axis_first():
    kernels, strides = plan((32, 64, 64), (3.0, 1.0, 1.0))
    assert strides[1] == [1, 2, 2] and kernels[0] == [1, 3, 3]


def test_same_output_structure_in_train_and_eval():
    model = build_dynunet((16, 16, 16), (6.0, 6.0, 6.0), base_filters=4, max_filters=8)
    x = torch.randn(1, 2, 16, 16, 16)
    model.train()
    train_out = model(x)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    assert isinstance(train_out, torch.Tensor) and isinstance(eval_out, torch.Tensor)
    assert train_out.shape == eval_out.shape == (1, 3, 16, 16, 16)


def test_bad_patch_is_named():
    with pytest.raises(ValueError, match=r"seg\.patch_size"):
        build_dynunet((18, 16, 16), (1.0, 1.0, 1.0))
