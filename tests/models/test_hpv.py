import torch

from hecktor.models.hpv import HPVNet, HPVOutput
from hecktor.models.segmentation import build_segmenter, make_plan


def _net():
    torch.manual_seed(0)
    return HPVNet(
        build_segmenter(make_plan("dynunet", (16, 16, 16), (6.0, 6.0, 6.0), 4, 16)),
        clinical_width=4,
        mlp_width=8,
    )


def test_same_structure_in_train_and_eval():
    net = _net()
    x, c = torch.randn(2, 2, 16, 16, 16), torch.randn(2, 4)
    out = net(x, c)
    assert (
        isinstance(out, HPVOutput)
        and out.segmentation.shape == (2, 3, 16, 16, 16)
        and out.hpv.shape == (2,)
    )
    net.eval()
    with torch.no_grad():
        again = net(x, c)
    assert isinstance(again, HPVOutput) and again.hpv.shape == (2,)


def test_encoder_only_inference_gives_the_full_models_logits():
    net = _net().eval()
    x, c = torch.randn(3, 2, 24, 16, 16), torch.randn(3, 4)  # larger than the planned patch
    with torch.no_grad():
        full = net(x, c).hpv
        encoder_only = net.logit(net.encode(x), c)
    torch.testing.assert_close(encoder_only, full)


def test_encoder_only_skips_the_decoder():
    net = _net().eval()
    calls = []
    net.segmenter.net.upsamples[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        net.logit(net.encode(torch.randn(1, 2, 16, 16, 16)), torch.randn(1, 4))
    assert calls == []
    with torch.no_grad():
        net(torch.randn(1, 2, 16, 16, 16), torch.randn(1, 4))
    assert calls == [1]
