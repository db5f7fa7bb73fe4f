import pytest
import torch

from hecktor.config import SegConfig
from hecktor.models.hpv import HPVNet
from hecktor.models.segmentation import NETWORKS, Plan, build_segmenter, make_plan


def test_the_config_offers_every_network():
    assert SegConfig.model_fields["network"].annotation.__args__ == NETWORKS


@pytest.mark.parametrize("network", NETWORKS)
def test_each_network_segments_and_exposes_its_bottleneck(network):
    torch.manual_seed(0)
    model = build_segmenter(make_plan(network, (16, 16, 16), (6.0, 6.0, 6.0), 8, 16))
    x = torch.randn(2, 2, 16, 16, 16)
    logits, features = model.forward_with_features(x)
    assert logits.shape == (2, 3, 16, 16, 16) and model(x).shape == logits.shape
    assert features.shape[:2] == (2, model.plan.channels)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), model.forward_with_features(x)[1])


@pytest.mark.parametrize("network", NETWORKS)
def test_a_plan_round_trips_and_rebuilds_the_same_network(network):
    planned = make_plan(network, (16, 16, 16), (6.0, 6.0, 6.0), 8, 16)
    again = Plan.from_dict(planned.to_dict())
    assert again == planned
    first, second = build_segmenter(planned), build_segmenter(again)
    second.load_state_dict(first.state_dict())  # same parameters, same shapes


@pytest.mark.parametrize("network", NETWORKS)
def test_the_hpv_head_works_on_either_network(network):
    torch.manual_seed(0)
    segmenter = build_segmenter(make_plan(network, (16, 16, 16), (6.0, 6.0, 6.0), 8, 16))
    net = HPVNet(segmenter, clinical_width=4, mlp_width=8).eval()
    x, c = torch.randn(2, 2, 24, 16, 16), torch.randn(2, 4)  # larger than the planned patch
    with torch.no_grad():
        torch.testing.assert_close(net.logit(net.encode(x), c), net(x, c).hpv)


def test_same_output_structure_in_train_and_eval():
    model = build_segmenter(make_plan("dynunet", (16, 16, 16), (6.0, 6.0, 6.0), 4, 8))
    x = torch.randn(1, 2, 16, 16, 16)
    model.train()
    train_out = model(x)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    assert isinstance(train_out, torch.Tensor) and isinstance(eval_out, torch.Tensor)
    assert train_out.shape == eval_out.shape == (1, 3, 16, 16, 16)


@pytest.mark.parametrize(
    ("network", "patch"), [("dynunet", (18, 16, 16)), ("segresnet", (20, 16, 16))]
)
def test_bad_patch_is_named(network, patch):
    with pytest.raises(ValueError, match=r"seg\.patch_size \(\d+, 16, 16\) must be divisible"):
        make_plan(network, patch, (1.0, 1.0, 1.0), 8, 16)


def test_segresnet_widths_fit_its_group_norm():
    with pytest.raises(ValueError, match=r"seg\.base_filters 4 .* multiple of 8"):
        make_plan("segresnet", (16, 16, 16), (1.0, 1.0, 1.0), 4, 16)
