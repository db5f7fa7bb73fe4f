"""Image features and clinical data meet in the fusion: both reach the output."""

import pytest
import torch

from hecktor.models.hpv import HPVNet
from hecktor.models.segmentation import build_segmenter, make_plan
from hecktor.models.survival import SurvivalNet, lesion_statistics


def _survival(fusion, lesion_features=False):
    torch.manual_seed(0)
    return SurvivalNet(5, (4, 8, 8, 16), 8, 0.0, fusion, lesion_features, voxel_cc=0.216).eval()


def _hpv(fusion):
    torch.manual_seed(0)
    segmenter = build_segmenter(make_plan("dynunet", (16, 16, 16), (6.0, 6.0, 6.0), 4, 16))
    return HPVNet(segmenter, clinical_width=5, mlp_width=8, dropout=0.0, fusion=fusion).eval()


def _inputs(batch=3):
    torch.manual_seed(1)
    image = torch.randn(batch, 4, 16, 16, 16)
    image[:, 2:] = (image[:, 2:] > 1.5).float()  # mask channels
    return image, torch.randn(batch, 5)


@pytest.mark.parametrize("fusion", ["concat", "additive"])
def test_zeroing_the_clinical_input_changes_every_models_output(fusion):
    image, clinical = _inputs()
    survival, hpv = _survival(fusion), _hpv(fusion)
    with torch.no_grad():
        for output in (
            lambda c: survival(image, c),
            lambda c: hpv.logit(hpv.encode(image[:, :2]), c),
        ):
            assert not torch.allclose(output(clinical), output(torch.zeros_like(clinical)))


@pytest.mark.parametrize("fusion", ["concat", "additive"])
def test_the_image_reaches_the_output_once_trained(fusion):
    """The additive form's image term starts at zero (the output is the clinical model's), and
    one gradient step is enough for the image to matter."""
    image, clinical = _inputs()
    net = _survival(fusion).train()
    if fusion == "additive":
        with torch.no_grad():
            assert torch.equal(net.parts(image, clinical)["image"], torch.zeros(3))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    (net(image, clinical) - torch.tensor([1.0, -1.0, 0.0])).pow(2).sum().backward()
    optimizer.step()
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(image, clinical), net(torch.zeros_like(image), clinical))


def test_the_additive_output_is_the_sum_of_its_parts():
    image, clinical = _inputs()
    net = _survival("additive", lesion_features=True)
    with torch.no_grad():
        net.head[1].weight.normal_()
        parts = net.parts(image, clinical)
        torch.testing.assert_close(net(image, clinical), parts["clinical"] + parts["image"])


def test_the_paper_fusion_keeps_its_weight_names():
    """Weights saved by the paper's form load into it by the names they always had."""
    keys = {k for k in _survival("concat").state_dict() if not k.startswith("encoder")}
    assert keys == {"clinical.0.weight", "clinical.0.bias", "clinical.2.weight",
                    "clinical.2.bias", "head.1.weight", "head.1.bias"}  # fmt: skip
    with pytest.raises(ValueError, match="unknown fusion"):
        _survival("sum")


def test_lesion_statistics_by_hand():
    image = torch.zeros(2, 4, 4, 4, 4)
    image[0, 2, :2, :2, :2] = 1  # 8 primary voxels of 0.5 cc: 4 cc
    image[0, 3, 3, 3, 3] = 0.5  # half a node voxel (a pooled mask): 0.25 cc
    image[0, 1] = 1.0
    image[0, 1, 0, 0, 0] = 5.0  # the PET peak, inside the primary
    image[0, 1, 3, 3, 3] = 9.0  # a node's half voxel is no lesion for the peak
    stats = lesion_statistics(image, voxel_cc=0.5)
    expected = torch.tensor([torch.log1p(torch.tensor(4.0)), torch.log1p(torch.tensor(0.25)),
                             5.0, (5.0 + 7 * 1.0) / 8])  # fmt: skip
    torch.testing.assert_close(stats[0], expected)
    torch.testing.assert_close(stats[1], torch.zeros(4))  # no lesion: zeros, not -inf
